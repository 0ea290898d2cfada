import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, Notification } from '@jupyterlab/apputils';
import { DocumentRegistry } from '@jupyterlab/docregistry';
import { INotebookModel, INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { IDisposable } from '@lumino/disposable';

import { IKernelStart, requestAPI } from './api';
import { SnapshotButton } from './toolbar';

const MARK_COMMAND = 'snapkernel:mark-setup-cell';
const SNAPSHOT_TAG = 'snapshot';

/** Adds the snapshot status button to every notebook's toolbar. */
class ToolbarExtension implements DocumentRegistry.IWidgetExtension<NotebookPanel, INotebookModel> {
  createNew(panel: NotebookPanel): IDisposable {
    const button = new SnapshotButton(panel);
    panel.toolbar.insertItem(10, 'snapkernelStatus', button);
    watchKernelStarts(panel);
    return button;
  }
}

/** Tell the user, once per kernel start, whether it was restored or started cold and why. */
function watchKernelStarts(panel: NotebookPanel): void {
  const announced = new Set<string>();
  const announce = async (): Promise<void> => {
    const kernel = panel.sessionContext.session?.kernel;
    if (!kernel || panel.sessionContext.session?.kernel?.name !== 'snapkernel') {
      return;
    }
    let start: IKernelStart;
    try {
      start = await requestAPI<IKernelStart>(`kernels/${kernel.id}`);
    } catch {
      return;
    }
    const key = `${kernel.id}:${start.started}`;
    if (announced.has(key)) {
      return;
    }
    announced.add(key);
    if (start.start === 'restored') {
      const saved = Math.max((start.setup_s ?? 0) - (start.restore_s ?? 0), 0);
      Notification.success(
        `Kernel restored from snapshot ${start.snapshot} in ${(start.restore_s ?? 0).toFixed(2)} s ` +
          `(${saved.toFixed(1)} s of setup saved)`,
        { autoClose: 5000 }
      );
    } else if (start.reason) {
      Notification.info(`Kernel started cold: ${start.reason}`, { autoClose: 8000 });
    }
  };
  panel.sessionContext.statusChanged.connect((_, status) => {
    if (status === 'idle') {
      void announce();
    }
  });
}

/** Toggle the setup-boundary tag on the active cell; at most one cell carries it. */
function markSetupCell(tracker: INotebookTracker): void {
  const panel = tracker.currentWidget;
  const active = panel?.content.activeCell;
  if (!panel || !active) {
    return;
  }
  const wasMarked = ((active.model.getMetadata('tags') as string[] | undefined) ?? []).includes(SNAPSHOT_TAG);
  for (const cell of panel.content.widgets) {
    const tags = ((cell.model.getMetadata('tags') as string[] | undefined) ?? []).filter(tag => tag !== SNAPSHOT_TAG);
    if (tags.length) {
      cell.model.setMetadata('tags', tags);
    } else {
      cell.model.deleteMetadata('tags');
    }
  }
  if (!wasMarked) {
    const tags = (active.model.getMetadata('tags') as string[] | undefined) ?? [];
    active.model.setMetadata('tags', [...tags, SNAPSHOT_TAG]);
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-snapkernel:plugin',
  description: 'Snapshot status, build and restore for notebooks, and the setup-cell marker',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette],
  activate: (app: JupyterFrontEnd, tracker: INotebookTracker, palette: ICommandPalette | null) => {
    app.commands.addCommand(MARK_COMMAND, {
      label: 'Mark Cell as Snapshot Setup Boundary',
      caption: 'The setup section is every code cell from the top through this one (toggles the snapshot tag)',
      isEnabled: () => !!tracker.activeCell,
      isToggled: () =>
        ((tracker.activeCell?.model.getMetadata('tags') as string[] | undefined) ?? []).includes(SNAPSHOT_TAG),
      execute: () => markSetupCell(tracker)
    });
    palette?.addItem({ command: MARK_COMMAND, category: 'Snapshots' });
    app.contextMenu.addItem({ command: MARK_COMMAND, selector: '.jp-Notebook .jp-Cell', rank: 20 });
    app.docRegistry.addWidgetExtension('Notebook', new ToolbarExtension());
  }
};

export default plugin;
