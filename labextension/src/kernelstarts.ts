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
      const restore = start.restore_s ?? 0;
      // The kernel's own figure (kernel.setup_saved_s), the one `%snapshot status` prints.
      const saved = start.saved_s ?? 0;
      Notification.success(
        trans.__(
          'Kernel restored from snapshot %1 in %2 s (%3 s of setup saved)',
          start.snapshot ?? '',
          restore.toFixed(2),
          saved.toFixed(1)
        ),
        { autoClose: 5000 }
      );
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
