import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** A notebook's snapshot state, as GET /snapkernel/api/status reports it. */
export type SnapshotState = 'none' | 'building' | 'ready' | 'stale' | 'failed';

export interface INotebookStatus {
  state: SnapshotState;
  snapshot: string | null;
  size_bytes: number | null;
  age_s: number | null;
  reason: string | null;
  reasons: string[];
  build: string | null;
}

export interface IBuild {
  id: string;
  state: 'building' | 'ready' | 'failed';
  cells: number;
  current_cell: number | null;
  elapsed_s: number;
  log: string[];
  snapshot: string | null;
  error: string | null;
}

export interface IKernelStart {
  start: 'restored' | 'cold';
  snapshot: string | null;
  reason: string | null;
  restore_s: number | null;
  setup_s: number | null;
  started: number;
}

/** Call the snapkernel REST API and return its JSON (or throw with the server's message). */
export async function requestAPI<T>(path: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'snapkernel', 'api', path);
  const response = await ServerConnection.makeRequest(url, init, settings);
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    throw new Error((data && (data.message || data.reason)) || response.statusText);
  }
  return data as T;
}
