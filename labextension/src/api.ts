import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** A notebook's snapshot state, as the status endpoint reports it. */
export type SnapshotState =
  'none' | 'queued' | 'building' | 'ready' | 'partial' | 'stale' | 'failed';

/** A restore point's state: `current` a start could restore it with the cells as they are now, `stale` its cells
 * or inputs changed since it was built. */
export type RestorePointState = 'current' | 'stale';

/** A restore point of a notebook's setup, as the status endpoint reports it. */
export interface IRestorePoint {
  /** The index (among all cells) of the cell it follows. */
  cell: number;
  /** How many setup cells it covers. */
  cells: number;
  state: RestorePointState;
}

/** The answer of GET or POST /snapkernel/api/status. */
export interface INotebookStatus {
  path: string;
  state: SnapshotState;
  setup_hash: string | null;
  snapshot: string | null;
  size_bytes: number | null;
  age_s: number | null;
  reason: string | null;
  reasons: string[];
  build: string | null;
  /** While queued: how many queued builds of the server run first. */
  queue_ahead: number | null;
  setup_cells: number[];
  setup_end: number | null;
  source: 'own' | 'shared' | null;
  /** How many setup cells the restore point a start restores covers; null: the whole setup, or nothing. */
  restored_cells: number | null;
  points: IRestorePoint[];
}

/** A build's progress, as GET /snapkernel/api/builds/ID reports it. */
export interface IBuild {
  id: string;
  /** The notebook's path relative to the server's root; null outside it. */
  path: string | null;
  setup_hash: string;
  state: 'queued' | 'building' | 'ready' | 'failed';
  /** While queued: how many queued builds of the server run first. */
  queue_ahead: number | null;
  cells: number;
  current_cell: number | null;
  elapsed_s: number;
  log: string[];
  snapshot: string | null;
  error: string | null;
}

/** How a kernel started, as GET /snapkernel/api/kernels/ID reports it. */
export interface IKernelStart {
  start: 'restored' | 'cold';
  snapshot: string | null;
  reason: string | null;
  restore_s: number | null;
  setup_s: number | null;
  /** The seconds of setup the restore saved, as `%snapshot status` prints them. */
  saved_s: number | null;
  started: number;
  /** Restored from a restore point after this many setup cells; null: the whole setup, or cold. */
  restored_cells: number | null;
  /** How many setup cells the notebook has; null: cold. */
  setup_cells: number | null;
  /** What a trusted registry gave this start: fetched now, fetching for the next start, or why not; null: not asked. */
  fetched: string | null;
}

/** A check's state: running, then how the restored runs compared with the cold runs. */
export type CheckState = 'running' | 'equal' | 'different' | 'cold_differs' | 'error';

/** One differing cell of a check: its index, first source line, both outputs and a hint at a known cause. */
export interface ICheckDifference {
  cell: number;
  source: string;
  cold: string;
  /** For `cold_differs`: another cold run's output. */
  restored: string;
  hint: string | null;
}

/** A check of restored runs against cold runs, as POST checks and GET checks/ID report it. */
export interface ICheck {
  id: string;
  path: string;
  state: CheckState;
  runs?: number;
  differences: ICheckDifference[];
  error: string | null;
  /** Whether the check built the snapshot first. */
  built?: boolean;
  elapsed_s: number;
}

/** The server extension's version and the kernelspecs it starts (GET /snapkernel/api/info). */
export interface IServerInfo {
  version: string;
  kernels: string[];
}

/** One cell as the status endpoint reads it: the fields that decide the setup section. */
export interface ICellInput {
  cell_type: string;
  source: string;
  metadata: { tags?: string[] };
}

/** A failed API call: the HTTP status (0 when the server could not be reached) and the server's message. */
export class APIError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
    this.name = 'APIError';
  }
}

/** Call the snapkernel REST API and return its JSON; throw an APIError with the server's message. */
export async function requestAPI<T>(path: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'snapkernel', 'api', path);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new APIError((error as Error).message || String(error), 0);
  }
  const text = await response.text();
  let data: unknown = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const reply = (data ?? {}) as { message?: string; reason?: string };
    const message =
      reply.message || reply.reason || response.statusText || `HTTP ${response.status}`;
    throw new APIError(message, response.status);
  }
  if (data === null) {
    throw new APIError(`${path}: the server answered no JSON`, response.status);
  }
  return data as T;
}

let info: Promise<IServerInfo> | null = null;

/** The server extension's info, fetched once; a failure is not kept, so the next call asks again. */
export function serverInfo(): Promise<IServerInfo> {
  if (info === null) {
    info = requestAPI<IServerInfo>('info');
    info.catch(() => {
      info = null;
    });
  }
  return info;
}

/** Whether an error says that the server has no snapkernel extension (its info route is missing). */
export function isExtensionMissing(error: unknown): boolean {
  return error instanceof APIError && error.status === 404;
}

/** The snapshot state of a notebook with the given cells (not the saved ones). */
export function postStatus(
  path: string,
  cells: ICellInput[],
  metadata: Record<string, unknown>
): Promise<INotebookStatus> {
  return requestAPI<INotebookStatus>('status', {
    method: 'POST',
    body: JSON.stringify({ path, cells, metadata })
  });
}
