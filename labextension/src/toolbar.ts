import { NotebookPanel } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { IBuild, INotebookStatus, SnapshotState, requestAPI } from './api';

const POLL_MS = 3000;
const BUILD_POLL_MS = 500;

const TOOLTIPS: Record<SnapshotState, string> = {
  none: 'No snapshot yet: click to build one from the setup cells (mark the last setup cell first)',
  building: 'Building the snapshot…',
  ready: 'Snapshot ready: click to restart the kernel from it',
  stale: 'The snapshot is stale: click to rebuild it',
  failed: 'The last build failed: click to try again'
};

const LABELS: Record<SnapshotState, string> = {
  none: 'No snapshot',
  building: 'Building…',
  ready: 'Snapshot ready',
  stale: 'Snapshot stale',
  failed: 'Build failed'
};

/** The toolbar item: shows the notebook's snapshot state and acts on it when clicked. */
export class SnapshotButton extends Widget {
  private state: SnapshotState = 'none';
  private detail = '';
  private timer = 0;
  private readonly button: HTMLButtonElement;

  constructor(private readonly panel: NotebookPanel) {
    super();
    this.addClass('jp-SnapKernel-status');
    this.button = document.createElement('button');
    this.button.addEventListener('click', () => void this.act());
    this.node.appendChild(this.button);
    this.render();
    void panel.context.ready.then(() => this.refresh());
    panel.context.saveState.connect((_, saved) => {
      if (saved === 'completed') {
        void this.refresh();
      }
    });
    this.timer = window.setInterval(() => void this.refresh(), POLL_MS);
  }

  dispose(): void {
    window.clearInterval(this.timer);
    super.dispose();
  }

  private get path(): string {
    return this.panel.context.path;
  }

  private render(): void {
    this.node.dataset.snapkernelState = this.state;
    this.button.textContent = this.state === 'building' && this.detail ? this.detail : LABELS[this.state];
    const reason = this.state === 'stale' || this.state === 'failed' ? this.detail : '';
    this.button.title = reason ? `${TOOLTIPS[this.state]} (${reason})` : TOOLTIPS[this.state];
  }

  private async refresh(): Promise<void> {
    if (this.state === 'building' && this.detail) {
      return; // a build we started reports its own progress
    }
    try {
      const status = await requestAPI<INotebookStatus>(`status?path=${encodeURIComponent(this.path)}`);
      this.state = status.state;
      this.detail = status.reason ?? '';
    } catch {
      return;
    }
    this.render();
  }

  private async act(): Promise<void> {
    if (this.state === 'building') {
      return;
    }
    if (this.state === 'ready') {
      await this.restartFromSnapshot();
      return;
    }
    await this.panel.context.save();
    let build: IBuild;
    try {
      build = await requestAPI<IBuild>('builds', { method: 'POST', body: JSON.stringify({ path: this.path }) });
    } catch (error) {
      this.state = 'failed';
      this.detail = (error as Error).message;
      this.render();
      return;
    }
    await this.follow(build.id);
  }

  private async follow(buildId: string): Promise<void> {
    for (;;) {
      const build = await requestAPI<IBuild>(`builds/${buildId}`);
      if (build.state !== 'building') {
        this.state = build.state;
        this.detail = build.error ?? '';
        this.render();
        return;
      }
      this.state = 'building';
      this.detail = build.current_cell ? `Building ${build.current_cell}/${build.cells}…` : 'Building…';
      this.render();
      this.button.title = build.log.slice(-3).join('\n') || TOOLTIPS.building;
      await new Promise(resolve => setTimeout(resolve, BUILD_POLL_MS));
    }
  }

  private async restartFromSnapshot(): Promise<void> {
    const context = this.panel.sessionContext;
    if (context.session?.kernel?.name !== 'snapkernel') {
      await context.changeKernel({ name: 'snapkernel' });
    } else {
      await context.restartKernel();
    }
  }
}
