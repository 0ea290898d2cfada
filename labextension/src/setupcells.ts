import { Cell, ICellModel } from '@jupyterlab/cells';
import { INotebookModel, NotebookPanel } from '@jupyterlab/notebook';
import { TranslationBundle } from '@jupyterlab/translation';

import { ICellInput, IRestorePoint, RestorePointState } from './api';

/** Class of every cell in the setup section. */
export const SETUP_CELL_CLASS = 'jp-SnapKernel-setupCell';
/** Class of the setup section's marked last cell. */
export const SETUP_END_CLASS = 'jp-SnapKernel-setupEnd';
/** Class of every cell a restore point follows; RESTORE_POINT_CLASS-current or -stale tells which. */
export const RESTORE_POINT_CLASS = 'jp-SnapKernel-restorePoint';
/** The states of restore points, each with its own class. */
const POINT_STATES: RestorePointState[] = ['current', 'stale'];
/** The tag that marks the last setup cell. */
export const SNAPSHOT_TAG = 'snapshot';

/** The notebook's cells as the status endpoint reads them, and the cell models they were taken from. */
export interface ICellsSnapshot {
  cells: ICellInput[];
  models: ICellModel[];
  metadata: Record<string, unknown>;
  /** The JSON sent: equal keys mean nothing that decides the setup section changed. */
  key: string;
}

/** The tags of a cell model. */
export function tagsOf(model: ICellModel): string[] {
  const tags = model.getMetadata('tags');
  return Array.isArray(tags) ? tags.filter((tag): tag is string => typeof tag === 'string') : [];
}

/** Take the notebook's current cells: type, source and tags of each (no outputs). */
export function currentCells(model: INotebookModel): ICellsSnapshot {
  const models: ICellModel[] = [];
  const cells: ICellInput[] = [];
  for (let index = 0; index < model.cells.length; index++) {
    const cell = model.cells.get(index);
    models.push(cell);
    cells.push({
      cell_type: cell.type,
      source: cell.sharedModel.getSource(),
      metadata: { tags: tagsOf(cell) }
    });
  }
  const settings = model.getMetadata('snapkernel');
  const metadata: Record<string, unknown> = settings === undefined ? {} : { snapkernel: settings };
  return { cells, models, metadata, key: JSON.stringify([cells, metadata]) };
}

/** Mark the setup section's cells (by the indices the server computed for `snapshot`), unmark the others. */
export function markSetupCells(
  panel: NotebookPanel,
  snapshot: ICellsSnapshot | null,
  setupCells: number[],
  setupEnd: number | null,
  trans: TranslationBundle
): void {
  const inSetup = new Set<ICellModel>();
  for (const index of setupCells) {
    const model = snapshot?.models[index];
    if (model) {
      inSetup.add(model);
    }
  }
  const end = setupEnd === null ? undefined : snapshot?.models[setupEnd];
  const label = trans.__('snapshot ends here');
  for (const cell of panel.content.widgets) {
    cell.toggleClass(SETUP_CELL_CLASS, inSetup.has(cell.model));
    const isEnd = end !== undefined && cell.model === end;
    cell.toggleClass(SETUP_END_CLASS, isEnd);
    if (isEnd) {
      cell.node.dataset.snapkernelLabel = label;
    } else {
      delete cell.node.dataset.snapkernelLabel;
    }
  }
}

/** Mark the cells that restore points follow (by the indices the server computed for `snapshot`), current or
 * stale; unmark the others. */
export function markRestorePoints(
  panel: NotebookPanel,
  snapshot: ICellsSnapshot | null,
  points: IRestorePoint[],
  trans: TranslationBundle
): void {
  const byModel = new Map<ICellModel, IRestorePoint>();
  for (const point of points) {
    const model = snapshot?.models[point.cell];
    if (model) {
      byModel.set(model, point);
    }
  }
  for (const cell of panel.content.widgets) {
    showRestorePoint(cell, byModel.get(cell.model), trans);
  }
}

/** Show a cell's restore point (its classes, state and label), or that it has none. */
function showRestorePoint(
  cell: Cell,
  point: IRestorePoint | undefined,
  trans: TranslationBundle
): void {
  cell.toggleClass(RESTORE_POINT_CLASS, point !== undefined);
  for (const state of POINT_STATES) {
    cell.toggleClass(`${RESTORE_POINT_CLASS}-${state}`, point?.state === state);
  }
  const data = cell.node.dataset;
  if (point === undefined) {
    delete data.snapkernelPoint;
    delete data.snapkernelPointLabel;
    return;
  }
  data.snapkernelPoint = point.state;
  data.snapkernelPointLabel = pointLabel(point, trans);
}

/** What a restore point's marker says: which setup cells it covers, and whether a start could restore it. */
function pointLabel(point: IRestorePoint, trans: TranslationBundle): string {
  const cells =
    point.cells === 1 ? trans.__('setup cell 1') : trans.__('setup cells 1-%1', point.cells);
  return point.state === 'current'
    ? trans.__('restore point: %1', cells)
    : trans.__('stale restore point: %1', cells);
}
