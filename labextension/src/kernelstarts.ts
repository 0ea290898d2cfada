import { Notification } from '@jupyterlab/apputils';
import { NotebookPanel } from '@jupyterlab/notebook';
import { TranslationBundle } from '@jupyterlab/translation';

import { IKernelStart, requestAPI, serverInfo } from './api';

/** Tell the user, once per kernel start, whether it was restored from a snapshot or started cold and why. */
export function watchKernelStarts(panel: NotebookPanel, trans: TranslationBundle): void {
  const announced = new Set<string>();
  const announce = async (): Promise<void> => {
    const kernel = panel.sessionContext.session?.kernel;
    if (!kernel) {
      return;
    }
    let start: IKernelStart;
    try {
      const { kernels } = await serverInfo();
      if (!kernels.includes(kernel.name)) {
        return;
      }
      start = await requestAPI<IKernelStart>(`kernels/${encodeURIComponent(kernel.id)}`);
    } catch {
      return; // the toolbar item shows a server that cannot be reached
    }
    const key = `${kernel.id}:${start.started}`;
    if (announced.has(key)) {
      return;
    }
    announced.add(key);
    if (start.start === 'restored') {
      // A snapshot fetched from a registry before this start: say from where and how long it took.
      const fetched = start.fetched ? trans.__('; %1', start.fetched) : '';
      Notification.success(restoredMessage(start, trans) + fetched, { autoClose: 5000 });
    } else if (start.reason) {
      Notification.info(trans.__('Kernel started cold: %1', start.reason), { autoClose: 8000 });
    }
  };
  panel.sessionContext.statusChanged.connect((_, status) => {
    if (status === 'idle') {
      void announce();
    }
  });
}

/** What a restored kernel's notification says: the snapshot, or the restore point and the cells that run again. */
function restoredMessage(start: IKernelStart, trans: TranslationBundle): string {
  const restore = (start.restore_s ?? 0).toFixed(2);
  const cells = start.restored_cells;
  const total = start.setup_cells;
  if (cells != null && total != null && cells < total) {
    const rest =
      cells + 1 === total
        ? trans.__('setup cell %1 runs again', total)
        : trans.__('setup cells %1-%2 run again', cells + 1, total);
    return trans.__(
      'Kernel restored from restore point after setup cell %1 of %2 in %3 s; %4',
      cells,
      total,
      restore,
      rest
    );
  }
  // The kernel's own figure (kernel.setup_saved_s), the one `%snapshot status` prints.
  const saved = (start.saved_s ?? 0).toFixed(1);
  return trans.__(
    'Kernel restored from snapshot %1 in %2 s (%3 s of setup saved)',
    start.snapshot ?? '',
    restore,
    saved
  );
}
