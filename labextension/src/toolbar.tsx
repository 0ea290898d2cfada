import { Dialog, ISessionContextDialogs, Notification, showDialog } from '@jupyterlab/apputils';
import { TranslationBundle } from '@jupyterlab/translation';
import {
  MenuSvg,
  ReactWidget,
  ToolbarButtonComponent,
  caretDownIcon
} from '@jupyterlab/ui-components';
import { Menu } from '@lumino/widgets';
import * as React from 'react';

import { serverInfo } from './api';
import { DisplayState, NotebookSnapshot } from './status';

/** Name of the item in the notebook toolbar (settings: jupyter.lab.toolbars.Notebook). */
export const TOOLBAR_ITEM = 'snapkernelStatus';

/** The label and tooltip of the item for a notebook's snapshot state. */
export function describe(
  snapshot: NotebookSnapshot,
  trans: TranslationBundle
): { label: string; tooltip: string } {
  const status = snapshot.status;
  const reason = status?.reason ?? '';
  const withReason = (text: string): string => (reason ? `${text} (${reason})` : text);
  const state: DisplayState = snapshot.state;
  switch (state) {
    case 'checking':
      return { label: trans.__('Snapshot…'), tooltip: trans.__('Checking the snapshot status…') };
    case 'unavailable':
      return {
        label: trans.__('No snapkernel server'),
        tooltip: trans.__(
          'snapkernel server extension not available: this Jupyter server has no /snapkernel/api. ' +
            'Install jupyter-snapkernel where the server runs and enable its server extension. ' +
            'Click to check again.'
        )
      };
    case 'error':
      return {
        label: trans.__('Snapshot status error'),
        tooltip: [
          trans.__('Cannot get the snapshot status: %1', snapshot.error ?? ''),
          snapshot.knownState
            ? trans.__('Last known: %1', describeKnown(snapshot, trans))
            : trans.__('The state is not known yet.'),
          trans.__('Retrying; click to retry now.')
        ].join('\n')
      };
    case 'queued': {
      const ahead = snapshot.build?.queue_ahead ?? status?.queue_ahead ?? null;
      return {
        label: ahead ? trans.__('Queued (%1 ahead)', ahead) : trans.__('Queued'),
        tooltip: withPartial(
          trans.__('The snapshot build waits until other builds of this server finish'),
          snapshot,
          trans
        )
      };
    }
    case 'building': {
      const build = snapshot.build;
      const label =
        build?.current_cell != null
          ? trans.__('Building %1/%2…', build.current_cell, build.cells)
          : trans.__('Building…');
      const log = build?.log.slice(-3).join('\n') ?? '';
      return {
        label,
        tooltip: withPartial(log || trans.__('Building the snapshot…'), snapshot, trans)
      };
    }
    case 'ready':
      return {
        label: trans.__('Snapshot ready'),
        tooltip:
          status?.source === 'shared'
            ? trans.__('Shared snapshot ready: click to restart the kernel from it')
            : trans.__('Snapshot ready: click to restart the kernel from it')
      };
    case 'partial':
      return describePartial(snapshot, trans);
    case 'stale':
      return {
        label: trans.__('Snapshot stale'),
        tooltip: withReason(trans.__('The snapshot is stale: click to rebuild it'))
      };
    case 'failed':
      return {
        label: trans.__('Build failed'),
        tooltip: withReason(trans.__('The last build failed: click to try again'))
      };
    case 'none':
      return {
        label: trans.__('No snapshot'),
        tooltip:
          status?.setup_end == null
            ? trans.__(
                'No snapshot yet: mark the last setup cell (tag it `snapshot`), then click to build one'
              )
            : trans.__('No snapshot yet: click to build one from the setup cells')
      };
  }
}

/** The label and tooltip of the partial state: a start restores a restore point, the cells after it run again. */
function describePartial(
  snapshot: NotebookSnapshot,
  trans: TranslationBundle
): { label: string; tooltip: string } {
  const status = snapshot.status;
  const restored = status?.restored_cells ?? 0;
  const total = status?.setup_cells.length ?? 0;
  return {
    label: trans.__('Restores %1/%2', restored, total),
    tooltip: [
      trans.__('A kernel start %1', status?.reason ?? trans.__('restores a restore point')),
      trans.__('Click to build the snapshot of the whole setup')
    ].join('\n')
  };
}

/** A building or queued tooltip, with what a kernel start restores meanwhile when that is a restore point. */
function withPartial(
  tooltip: string,
  snapshot: NotebookSnapshot,
  trans: TranslationBundle
): string {
  const status = snapshot.status;
  if (status?.restored_cells == null || !status.reasons.length) {
    return tooltip;
  }
  return `${tooltip}\n${trans.__('Meanwhile a kernel start %1', status.reasons[0])}`;
}

/** The last state the server told, in words, for an error's tooltip. */
function describeKnown(snapshot: NotebookSnapshot, trans: TranslationBundle): string {
  const build = snapshot.build;
  switch (snapshot.knownState) {
    case 'queued':
      return trans.__('build queued');
    case 'building':
      return build?.current_cell != null
        ? trans.__('building, cell %1 of %2', build.current_cell, build.cells)
        : trans.__('building');
    case 'ready':
      return trans.__('snapshot ready');
    case 'partial':
      return trans.__('restore point ready');
    case 'stale':
      return trans.__('snapshot stale');
    case 'failed':
      return trans.__('build failed');
    default:
      return trans.__('no snapshot');
  }
}

/** The toolbar item: shows the notebook's snapshot state and acts on it when clicked; its caret opens a menu. */
export class SnapshotToolbarItem extends ReactWidget {
  private readonly menu: MenuSvg;

  constructor(
    private readonly snapshot: NotebookSnapshot,
    private readonly dialogs: ISessionContextDialogs,
    private readonly trans: TranslationBundle,
    commands: Menu.IOptions['commands'],
    menuCommands: string[]
  ) {
    super();
    this.addClass('jp-SnapKernel-status');
    this.menu = new MenuSvg({ commands });
    this.menu.addClass('jp-SnapKernel-menu');
    for (const command of menuCommands) {
      this.menu.addItem({ command });
    }
    this.sync();
    snapshot.changed.connect(this.sync, this);
  }

  dispose(): void {
    this.menu.dispose();
    super.dispose();
  }

  protected render(): JSX.Element {
    const { label, tooltip } = describe(this.snapshot, this.trans);
    return (
      <>
        <ToolbarButtonComponent
          className="jp-SnapKernel-button"
          dataset={{ 'snapkernel-state': this.snapshot.state }}
          label={label}
          tooltip={tooltip}
          onClick={() => void this.act()}
        />
        <ToolbarButtonComponent
          className="jp-SnapKernel-menuButton"
          icon={caretDownIcon}
          tooltip={this.trans.__('More snapshot actions')}
          onClick={() => this.openMenu()}
        />
      </>
    );
  }

  /** Open the item's menu under its caret, where a toolbar dropdown opens. */
  private openMenu(): void {
    const caret = this.node.querySelector('.jp-SnapKernel-menuButton') ?? this.node;
    const { left, bottom } = caret.getBoundingClientRect();
    // Commands are enabled for the current notebook: the one whose toolbar was clicked.
    this.snapshot.panel.activate();
    this.menu.open(left, bottom, { forceX: false, forceY: true });
  }

  /** Show the current state on the node (for styles; the button has it once rendered) and render again. */
  private sync(): void {
    this.node.dataset.snapkernelState = this.snapshot.state;
    this.update();
  }

  /** Do what the state offers: build (the whole setup, when only a restore point is ready), restart from the
   * snapshot, or check again. */
  private async act(): Promise<void> {
    try {
      switch (this.snapshot.state) {
        case 'queued':
        case 'building':
          return;
        case 'ready':
          await this.restartFromSnapshot();
          return;
        case 'none':
        case 'partial':
        case 'stale':
        case 'failed':
          await this.snapshot.startBuild();
          return;
        default:
          await this.snapshot.refresh();
      }
    } catch (error) {
      Notification.error(this.trans.__('Snapshot: %1', (error as Error).message), {
        autoClose: 8000
      });
    }
  }

  /** Restart the kernel (after the usual confirmation), or switch to a kernel that snapkernel starts. */
  private async restartFromSnapshot(): Promise<void> {
    const context = this.snapshot.panel.sessionContext;
    const { kernels } = await serverInfo();
    const current = context.session?.kernel?.name;
    if (current !== undefined && kernels.includes(current)) {
      await this.dialogs.restart(context);
      return;
    }
    if (kernels.length === 0) {
      Notification.warning(this.trans.__('No kernel of this server starts from snapshots'), {
        autoClose: 8000
      });
      return;
    }
    const result = await showDialog({
      title: this.trans.__('Switch to a snapshot kernel?'),
      body: this.trans.__(
        'The kernel %1 does not start from snapshots. Switch this notebook to %2? All variables will be lost.',
        current ?? this.trans.__('(none)'),
        kernels[0]
      ),
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: this.trans.__('Switch') })]
    });
    if (result.button.accept) {
      await context.changeKernel({ name: kernels[0] });
    }
  }
}
