import { NotebookPanel } from '@jupyterlab/notebook';
import { IDisposable } from '@lumino/disposable';
import { Debouncer, IPoll, Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import {
  APIError,
  IBuild,
  INotebookStatus,
  SnapshotState,
  isExtensionMissing,
  postStatus,
  requestAPI,
  serverInfo
} from './api';
import { ICellsSnapshot, currentCells } from './setupcells';

/** What the toolbar shows: the snapshot's state, or why it cannot be known now. */
export type DisplayState = SnapshotState | 'checking' | 'error' | 'unavailable';

/** Poll interval while a build runs (its progress), in ms. */
const BUILD_POLL_MS = 500;
/** Longest wait between polls after failures (exponential backoff), in ms. */
const MAX_BACKOFF_MS = 30_000;
/** Quiet time after an edit before the cells are sent, in ms. */
const EDIT_DEBOUNCE_MS = 400;
/** Default poll interval, in ms (the `pollInterval` setting). */
export const DEFAULT_POLL_MS = 3000;

/** One notebook's snapshot state, kept current by a poll and by the cells being edited. */
export class NotebookSnapshot implements IDisposable {
  private readonly poll: Poll;
  private readonly edits: Debouncer;
  private readonly changedSignal = new Signal<this, void>(this);
  private interval: number;
  private seq = 0;
  private readonly followed = new FollowedBuild();
  private statusValue: INotebookStatus | null = null;
  private errorValue: string | null = null;
  private missing = false;
  private sent: ICellsSnapshot | null = null;
  private disposed = false;

  constructor(
    readonly panel: NotebookPanel,
    interval: number = DEFAULT_POLL_MS
  ) {
    this.interval = interval;
    this.poll = statusPoll(panel, interval, () => this.tick());
    this.edits = new Debouncer(() => this.poll.refresh(), EDIT_DEBOUNCE_MS);
    panel.context.ready
      .then(() => {
        if (!this.disposed) {
          watchSetupEdits(panel, () => this.sent, this.edits, this);
          void this.poll.start();
        }
      })
      .catch(() => undefined); // a notebook that cannot be opened has no snapshot state to show
    panel.disposed.connect(() => this.dispose());
  }

  /** Emitted whenever the state, the build's progress, the error or the setup cells change. */
  get changed(): ISignal<this, void> {
    return this.changedSignal;
  }

  /** What to show now. */
  get state(): DisplayState {
    if (this.missing) {
      return 'unavailable';
    }
    if (this.errorValue !== null) {
      return 'error';
    }
    return this.knownState ?? 'checking';
  }

  /** The last state the server told (a followed build counts as queued or building), despite errors since. */
  get knownState(): SnapshotState | null {
    const build = this.followed.build;
    if (build !== null) {
      return build.state === 'queued' ? 'queued' : 'building';
    }
    return this.statusValue?.state ?? null;
  }

  /** The server's last answer about this notebook. */
  get status(): INotebookStatus | null {
    return this.statusValue;
  }

  /** The progress of the build being followed, while it runs. */
  get build(): IBuild | null {
    return this.followed.build;
  }

  /** Why the last request failed; null once one succeeded. */
  get error(): string | null {
    return this.errorValue;
  }

  /** The cells the server's last answer was computed from (its setup_cells index them). */
  get cells(): ICellsSnapshot | null {
    return this.sent;
  }

  /** Set the time between polls, in ms (the `pollInterval` setting). */
  setInterval(ms: number): void {
    this.interval = ms;
    this.updateFrequency();
  }

  /** Ask the server now; resolves once the answer is in. */
  async refresh(): Promise<void> {
    await this.poll.refresh();
    await this.poll.tick;
  }

  /** Save the notebook and start (or join) the build of its snapshot; throws with the server's reason. */
  async startBuild(): Promise<void> {
    await this.panel.context.save();
    await this.followed.start(this.panel.context.path);
    this.seq++; // an answer in flight predates the build
    this.errorValue = null;
    this.changedSignal.emit();
    void this.poll.refresh();
  }

  /** Whether the notebook panel is gone (and the poll with it). */
  get isDisposed(): boolean {
    return this.disposed;
  }

  /** Stop polling and listening; called when the notebook panel is disposed. */
  dispose(): void {
    if (this.disposed) {
      return;
    }
    this.disposed = true;
    this.poll.dispose();
    this.edits.dispose();
    Signal.clearData(this);
  }

  /** One poll: the followed build's progress, then the state of the notebook's current cells. */
  private async tick(): Promise<void> {
    const seq = ++this.seq;
    try {
      const { build, cells, status } = await askServer(this.panel, this.followed);
      if (seq !== this.seq) {
        return;
      }
      if (build !== undefined) {
        this.followed.follow(build);
      }
      this.statusValue = status;
      this.sent = cells;
      const active = status.state === 'queued' || status.state === 'building';
      if (this.followed.id === null && active && status.build) {
        this.followed.followId(status.build); // a build started elsewhere: its progress from the next poll
      }
      this.missing = false;
      this.errorValue = null;
    } catch (error) {
      if (seq !== this.seq) {
        return;
      }
      this.missing = isExtensionMissing(error);
      this.errorValue = this.missing ? null : messageOf(error);
      throw error; // the poll backs off, and tries again
    } finally {
      if (seq === this.seq && !this.disposed) {
        this.updateFrequency();
        this.changedSignal.emit();
      }
    }
  }

  /** Poll fast while a build runs, at the set interval otherwise. */
  private updateFrequency(): void {
    const interval =
      this.followed.id !== null ? Math.min(BUILD_POLL_MS, this.interval) : this.interval;
    const current = this.poll.frequency;
    if (current.interval !== interval) {
      this.poll.frequency = frequency(interval);
    }
  }
}

/** The followed build's progress (undefined: none is followed; null: the server forgot it), then the state
 * of the notebook's current cells, with those cells. */
async function askServer(
  panel: NotebookPanel,
  followed: FollowedBuild
): Promise<{ build: IBuild | null | undefined; cells: ICellsSnapshot; status: INotebookStatus }> {
  await serverInfo();
  const build = followed.id !== null ? await followed.fetch() : undefined;
  const cells = currentCells(panel.context.model);
  const status = await postStatus(panel.context.path, cells.cells, cells.metadata);
  return { build, cells, status };
}

/** The build a notebook's toolbar follows while it is queued or running. */
class FollowedBuild {
  /** The followed build's id; null when none is followed. */
  id: string | null = null;
  /** The followed build's last known progress; null before the first answer about it. */
  build: IBuild | null = null;

  /** Follow a build known only by its id (one started elsewhere). */
  followId(id: string): void {
    this.id = id;
  }

  /** Start (or join) the build of the notebook at `path` and follow it; throws with the server's reason. */
  async start(path: string): Promise<void> {
    this.follow(
      await requestAPI<IBuild>('builds', { method: 'POST', body: JSON.stringify({ path }) })
    );
  }

  /** Keep following a running build; forget a finished one (the status answer says what it left). */
  follow(build: IBuild | null): void {
    const running = build !== null && (build.state === 'queued' || build.state === 'building');
    this.id = running ? build.id : null;
    this.build = running ? build : null;
  }

  /** The followed build's progress; null when the server no longer knows it (it restarted). */
  async fetch(): Promise<IBuild | null> {
    if (this.id === null) {
      return null;
    }
    try {
      return await requestAPI<IBuild>(`builds/${encodeURIComponent(this.id)}`);
    } catch (error) {
      if (error instanceof APIError && error.status === 404) {
        return null;
      }
      throw error;
    }
  }
}

/** Ask again (through `edits`, once they settle) when an edit changes what the server reads of the notebook: its
 * cells' sources, types and tags, not their outputs. `sent` gives the cells of the last answer; `owner`'s
 * Signal.clearData ends the watch. */
function watchSetupEdits(
  panel: NotebookPanel,
  sent: () => ICellsSnapshot | null,
  edits: Debouncer,
  owner: object
): void {
  const model = panel.context.model;
  model.contentChanged.connect(() => {
    const last = sent();
    if (last === null || currentCells(model).key !== last.key) {
      edits.invoke().catch(() => undefined);
    }
  }, owner);
}

/** The poll that keeps a notebook panel's snapshot state current: paused while the panel is hidden. */
function statusPoll(panel: NotebookPanel, interval: number, factory: () => Promise<void>): Poll {
  return new Poll({
    auto: false,
    factory,
    frequency: frequency(interval),
    name: `snapkernel:status:${panel.id}`,
    standby: () => (panel.isVisible ? 'when-hidden' : true)
  });
}

/** A poll's frequency: every `interval` ms, backing off after failures up to MAX_BACKOFF_MS (or the interval). */
function frequency(interval: number): IPoll.Frequency {
  return { interval, backoff: true, max: Math.max(MAX_BACKOFF_MS, interval) };
}

/** One line saying why a request failed. */
function messageOf(error: unknown): string {
  if (error instanceof APIError && error.status > 0) {
    return `${error.status} ${error.message}`;
  }
  return error instanceof Error ? error.message : String(error);
}
