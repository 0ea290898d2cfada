import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import {
  ICommandPalette,
  ISessionContextDialogs,
  IToolbarWidgetRegistry,
  SessionContextDialogs
} from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { ITranslator, nullTranslator } from '@jupyterlab/translation';

import { CHECK_COMMAND, checkNotebook } from './check';
import { MARK_COMMAND, isActiveCellMarked, markSetupCell } from './commands';
import { watchKernelStarts } from './kernelstarts';
import { NotebookSnapshots } from './notebooks';
import { DEFAULT_POLL_MS } from './status';
import { SnapshotToolbarItem, TOOLBAR_ITEM } from './toolbar';

const PLUGIN_ID = 'jupyter-snapkernel:plugin';
/** The document widget factory whose toolbar holds the item. */
const NOTEBOOK_FACTORY = 'Notebook';

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Snapshot status, build and restore for notebooks, and the setup-cell marker',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [
    ITranslator,
    IToolbarWidgetRegistry,
    ISettingRegistry,
    ISessionContextDialogs,
    ICommandPalette
  ],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    translator: ITranslator | null,
    toolbarRegistry: IToolbarWidgetRegistry | null,
    settingRegistry: ISettingRegistry | null,
    sessionDialogs: ISessionContextDialogs | null,
    palette: ICommandPalette | null
  ) => {
    translator = translator ?? nullTranslator;
    const trans = translator.load('jupyter_snapkernel');
    const dialogs = sessionDialogs ?? new SessionContextDialogs({ translator });
    const snapshots = new NotebookSnapshots(trans);
    const createItem = (panel: NotebookPanel) =>
      new SnapshotToolbarItem(snapshots.of(panel), dialogs, trans, app.commands, [
        CHECK_COMMAND,
        MARK_COMMAND
      ]);

    if (toolbarRegistry) {
      // Placed by jupyter.lab.toolbars.Notebook in schema/plugin.json: users move or hide it there.
      toolbarRegistry.addFactory<NotebookPanel>(NOTEBOOK_FACTORY, TOOLBAR_ITEM, createItem);
    } else {
      app.docRegistry.addWidgetExtension(NOTEBOOK_FACTORY, {
        createNew: (panel: NotebookPanel) => {
          const item = createItem(panel);
          panel.toolbar.insertItem(10, TOOLBAR_ITEM, item);
          return item;
        }
      });
    }
    tracker.widgetAdded.connect((_, panel) => {
      snapshots.of(panel); // setup cells are marked even where the toolbar item is hidden
      watchKernelStarts(panel, trans);
    });

    if (settingRegistry) {
      const apply = (settings: ISettingRegistry.ISettings): void => {
        const seconds = settings.get('pollInterval').composite;
        snapshots.setInterval(typeof seconds === 'number' ? seconds * 1000 : DEFAULT_POLL_MS);
      };
      settingRegistry
        .load(PLUGIN_ID)
        .then(settings => {
          apply(settings);
          settings.changed.connect(apply);
        })
        .catch(reason => console.warn(`${PLUGIN_ID}: cannot load the settings`, reason));
    }

    app.commands.addCommand(MARK_COMMAND, {
      label: trans.__('Mark Cell as Snapshot Setup Boundary'),
      caption: trans.__(
        'The setup section is every code cell from the top through this one (toggles the snapshot tag)'
      ),
      isEnabled: () => !!tracker.activeCell,
      isToggled: () => isActiveCellMarked(tracker),
      execute: () => markSetupCell(tracker)
    });
    palette?.addItem({ command: MARK_COMMAND, category: trans.__('Snapshots') });
    app.commands.addCommand(CHECK_COMMAND, {
      label: trans.__('Check Restored Against Cold'),
      caption: trans.__(
        'Run the saved notebook cold and restored from its snapshot and compare every cell’s outputs'
      ),
      isEnabled: () => tracker.currentWidget !== null,
      execute: async () => {
        const panel = tracker.currentWidget;
        return panel ? checkNotebook(panel, trans) : null;
      }
    });
    palette?.addItem({ command: CHECK_COMMAND, category: trans.__('Snapshots') });
    app.contextMenu.addItem({ command: MARK_COMMAND, selector: '.jp-Notebook .jp-Cell', rank: 20 });
  }
};

export default plugin;
