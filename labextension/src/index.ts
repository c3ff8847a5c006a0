/**
 * The nbbatch JupyterLab extension: a "Batch jobs" panel in the left sidebar.
 */
import {
  ILabShell,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { LabIcon } from '@jupyterlab/ui-components';

import { JobsPanel } from './panel';

const ICON = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <rect x="3" y="4" width="18" height="4" rx="1"/>
    <rect x="3" y="10" width="12" height="4" rx="1"/>
    <rect x="3" y="16" width="7" height="4" rx="1"/>
  </g>
</svg>`;

export const jobsIcon = new LabIcon({ name: 'nbbatch:jobs', svgstr: ICON });

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'nbbatch:jobs-sidebar',
  description: 'Lists every nbbatch batch job in the ledger, live, with its actions.',
  autoStart: true,
  optional: [ILabShell, INotebookTracker],
  activate: (
    app: JupyterFrontEnd,
    labShell: ILabShell | null,
    notebooks: INotebookTracker | null
  ) => {
    const panel = new JobsPanel({
      insertIntoNotebook: (code: string) => {
        const current = notebooks?.currentWidget;
        if (!current) {
          return false;
        }
        const notebook = current.content;
        NotebookActions.insertBelow(notebook);
        notebook.activeCell?.model.sharedModel.setSource(code);
        app.shell.activateById(current.id);
        return true;
      }
    });
    panel.title.icon = jobsIcon;
    app.shell.add(panel, 'left', { rank: 700 });
    app.commands.addCommand('nbbatch:show-jobs', {
      label: 'Show Batch Jobs',
      execute: () => app.shell.activateById(panel.id)
    });
    void labShell; // the panel works in any shell with a left area
    void panel.refresh();
  }
};

export default plugin;
