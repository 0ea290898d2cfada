import { INotebookTracker } from '@jupyterlab/notebook';

import { SNAPSHOT_TAG, tagsOf } from './setupcells';

/** Id of the command that toggles the setup-boundary tag on the active cell. */
export const MARK_COMMAND = 'snapkernel:mark-setup-cell';

/** Whether the active cell carries the setup-boundary tag. */
export function isActiveCellMarked(tracker: INotebookTracker): boolean {
  const cell = tracker.activeCell;
  return cell !== null && tagsOf(cell.model).includes(SNAPSHOT_TAG);
}

/** Toggle the setup-boundary tag on the active cell; at most one cell carries it. */
export function markSetupCell(tracker: INotebookTracker): void {
  const panel = tracker.currentWidget;
  const active = panel?.content.activeCell;
  if (!panel || !active) {
    return;
  }
  const wasMarked = tagsOf(active.model).includes(SNAPSHOT_TAG);
  for (const cell of panel.content.widgets) {
    const all = tagsOf(cell.model);
    const tags = all.filter(tag => tag !== SNAPSHOT_TAG);
    if (tags.length === all.length) {
      continue;
    }
    if (tags.length) {
      cell.model.setMetadata('tags', tags);
    } else {
      cell.model.deleteMetadata('tags');
    }
  }
  if (!wasMarked) {
    active.model.setMetadata('tags', [...tagsOf(active.model), SNAPSHOT_TAG]);
  }
}
