import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { NotebookPanel } from '@jupyterlab/notebook';
import { TranslationBundle } from '@jupyterlab/translation';
import { Poll } from '@lumino/polling';
import * as React from 'react';

import { APIError, ICheck, ICheckDifference, requestAPI } from './api';

/** Id of the command that checks the current notebook's restored runs against its cold runs. */
export const CHECK_COMMAND = 'snapkernel:check-restored';
/** How often a running check is asked for its state, in ms (a check takes tens of seconds). */
const CHECK_POLL_MS = 1000;
/** Failed requests in a row after which the dialog says the check's state is unknown. */
const MAX_FAILED_POLLS = 10;

/** Save the notebook, run `check` on the server, show its progress and then its result in a dialog. */
export async function checkNotebook(
  panel: NotebookPanel,
  trans: TranslationBundle
): Promise<ICheck | null> {
  const name = panel.context.localPath.split('/').pop() ?? panel.context.path;
  let check: ICheck;
  try {
    if (panel.context.model.dirty) {
      await panel.context.save(); // the server checks the saved notebook, so it must be what the user sees
    }
    check = await requestAPI<ICheck>('checks', {
      method: 'POST',
      body: JSON.stringify({ path: panel.context.path })
    });
  } catch (error) {
    Notification.error(trans.__('Cannot check %1: %2', name, (error as Error).message), {
      autoClose: 8000
    });
    return null;
  }
  const progress = Notification.emit(
    trans.__('Checking %1: restored runs against cold runs…', name),
    'in-progress',
    { autoClose: false }
  );
  try {
    check = await followCheck(check, current =>
      Notification.update({
        id: progress,
        message: trans.__(
          'Checking %1: restored runs against cold runs… %2 s',
          name,
          Math.round(current.elapsed_s)
        )
      })
    );
  } catch (error) {
    check = { ...check, state: 'error', error: (error as Error).message };
  } finally {
    Notification.dismiss(progress);
  }
  await showCheckResult(panel, check, trans);
  return check;
}

/** Poll GET checks/ID until the check has ended; report each running state to `onProgress`. */
function followCheck(check: ICheck, onProgress: (check: ICheck) => void): Promise<ICheck> {
  return new Promise<ICheck>((resolve, reject) => {
    let failures = 0;
    const poll = new Poll<ICheck, Error>({
      auto: true,
      factory: async () => {
        let current: ICheck;
        try {
          current = await requestAPI<ICheck>(`checks/${encodeURIComponent(check.id)}`);
        } catch (error) {
          failures += 1;
          // A server that forgot the check (404: it restarted) will never know its result.
          if ((error instanceof APIError && error.status === 404) || failures >= MAX_FAILED_POLLS) {
            reject(error);
            poll.dispose();
          }
          throw error;
        }
        failures = 0;
        if (current.state === 'running') {
          onProgress(current);
        } else {
          resolve(current);
          poll.dispose();
        }
        return current;
      },
      frequency: { interval: CHECK_POLL_MS, backoff: true, max: 10 * CHECK_POLL_MS },
      name: `snapkernel:check:${check.id}`,
      standby: 'never'
    });
  });
}

/** The dialog with a check's verdict; for a difference, a button that selects the differing cell. */
async function showCheckResult(
  panel: NotebookPanel,
  check: ICheck,
  trans: TranslationBundle
): Promise<void> {
  const first = check.differences[0] ?? null;
  const goToCell = trans.__('Go to Cell');
  const buttons = [Dialog.okButton({ label: trans.__('Close') })];
  if (first !== null && check.state !== 'error') {
    buttons.unshift(Dialog.createButton({ label: goToCell, displayType: 'default' }));
  }
  const result = await showDialog({
    title: `${check.path.split('/').pop()}: ${checkTitle(check, trans)}`,
    body: checkBody(check, trans),
    buttons
  });
  if (first !== null && result.button.label === goToCell) {
    panel.content.activeCellIndex = first.cell;
    panel.content.mode = 'command';
    void panel.content.scrollToItem(first.cell);
  }
}

/** Each check state's title for the dialog. */
const CHECK_TITLES: Record<ICheck['state'], (trans: TranslationBundle) => string> = {
  equal: trans => trans.__('restored equals cold'),
  different: trans => trans.__('restored differs from cold'),
  cold_differs: trans => trans.__('cold runs differ too'),
  running: trans => trans.__('check still running'),
  error: trans => trans.__('could not check')
};

/** The dialog's title: the verdict in a few words. */
function checkTitle(check: ICheck, trans: TranslationBundle): string {
  return (CHECK_TITLES[check.state] ?? CHECK_TITLES.error)(trans);
}

/** The dialog's body: the verdict in a sentence, then the first differing cell with both outputs. */
function checkBody(check: ICheck, trans: TranslationBundle): JSX.Element {
  const runs = check.runs ?? 2;
  const first = check.differences[0] ?? null;
  let verdict: string;
  switch (check.state) {
    case 'equal':
      verdict = trans.__(
        'equal: %1 restored runs showed what %1 cold runs showed, in every cell (%2 s).',
        runs,
        check.elapsed_s.toFixed(0)
      );
      break;
    case 'different':
      verdict = trans.__(
        'different: a restored run shows other outputs than the cold runs (%1 s).',
        check.elapsed_s.toFixed(0)
      );
      break;
    case 'cold_differs':
      verdict = trans.__(
        'cold runs differ too: two cold runs already show different outputs, so restoring is not the cause. ' +
          'Seed what is random, or leave such output out, before comparing.'
      );
      break;
    default:
      verdict = trans.__('error: %1', check.error ?? trans.__('the check ended without a result'));
  }
  return (
    <div className="jp-SnapKernel-check" data-snapkernel-check={check.state}>
      <p className="jp-SnapKernel-checkVerdict">{verdict}</p>
      {first !== null && check.state !== 'error' && (
        <CheckDifference
          difference={first}
          otherLabel={
            check.state === 'cold_differs' ? trans.__('Another cold run') : trans.__('Restored')
          }
          trans={trans}
        />
      )}
      {check.differences.length > 1 && check.state !== 'error' && (
        <p>
          {trans.__(
            'Other restored runs first differ in: %1',
            check.differences
              .slice(1)
              .map(other => trans.__('cell %1', other.cell + 1))
              .join(', ')
          )}
        </p>
      )}
    </div>
  );
}

/** One differing cell: its number and first line, the cold output, the other output, and the hint. */
function CheckDifference(props: {
  difference: ICheckDifference;
  otherLabel: string;
  trans: TranslationBundle;
}): JSX.Element {
  const { difference, otherLabel, trans } = props;
  return (
    <div className="jp-SnapKernel-checkDifference" data-snapkernel-cell={difference.cell}>
      <p>
        {trans.__('First differing cell: cell %1', difference.cell + 1)}{' '}
        <code>{difference.source}</code>
      </p>
      <div className="jp-SnapKernel-checkOutputs">
        <div>
          <h4>{trans.__('Cold')}</h4>
          <pre className="jp-SnapKernel-checkCold">
            {difference.cold || trans.__('(no output)')}
          </pre>
        </div>
        <div>
          <h4>{otherLabel}</h4>
          <pre className="jp-SnapKernel-checkRestored">
            {difference.restored || trans.__('(no output)')}
          </pre>
        </div>
      </div>
      {difference.hint && (
        <p className="jp-SnapKernel-checkHint">{trans.__('Hint: %1', difference.hint)}</p>
      )}
    </div>
  );
}
