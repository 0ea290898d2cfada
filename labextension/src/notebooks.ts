import { NotebookPanel } from '@jupyterlab/notebook';
import { TranslationBundle } from '@jupyterlab/translation';

import { markRestorePoints, markSetupCells } from './setupcells';
import { DEFAULT_POLL_MS, NotebookSnapshot } from './status';

/** One NotebookSnapshot per open notebook, with its setup cells and restore points
 * marked; each lives as long as its panel. */
export class NotebookSnapshots {
  private readonly byPanel = new Map<NotebookPanel, NotebookSnapshot>();
  private interval = DEFAULT_POLL_MS;

  constructor(private readonly trans: TranslationBundle) {}

  /** The snapshot state of a notebook panel, created on first use. */
  of(panel: NotebookPanel): NotebookSnapshot {
    let snapshot = this.byPanel.get(panel);
    if (snapshot === undefined) {
      snapshot = new NotebookSnapshot(panel, this.interval);
      this.byPanel.set(panel, snapshot);
      snapshot.changed.connect(() => this.mark(panel));
      panel.disposed.connect(() => this.byPanel.delete(panel));
    }
    return snapshot;
  }

  /** Set every notebook's poll interval, in ms. */
  setInterval(ms: number): void {
    this.interval = ms;
    for (const snapshot of this.byPanel.values()) {
      snapshot.setInterval(ms);
    }
  }

  /** Mark the panel's setup cells and restore points as the server's last answer has them. */
  private mark(panel: NotebookPanel): void {
    const snapshot = this.byPanel.get(panel);
    const status = snapshot?.status;
    if (snapshot === undefined || status === null || status === undefined) {
      return;
    }
    markSetupCells(
      panel,
      snapshot.cells,
      status.setup_cells ?? [],
      status.setup_end ?? null,
      this.trans
    );
    markRestorePoints(panel, snapshot.cells, status.points ?? [], this.trans);
  }
}
