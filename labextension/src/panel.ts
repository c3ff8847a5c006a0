/**
 * The "Batch jobs" sidebar: a view of the ledger. It lists what the server's JSON
 * says, refreshes itself (every 2 s while a job runs, every 5 s otherwise, at once
 * when shown), asks the server to check the running jobs when it is shown and every
 * minute while visible (poll only: nothing is ever sent from here), and changes a job
 * only through the buttons the user presses.
 */
import { Clipboard, Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import * as api from './api';
import {
  age,
  checkDue,
  checkedText,
  countsText,
  done,
  count,
  IFailedResponse,
  IJob,
  isActive,
  marks,
  money,
  IDLE_MS,
  nextDelay,
  originName,
  segments,
  staleText
} from './model';

/** What the panel needs from JupyterLab, so it can be built without the app. */
export interface IPanelHost {
  /** Put `code` in a new cell of the active notebook; false when there is none. */
  insertIntoNotebook(code: string): boolean;
}

export class JobsPanel extends Widget {
  constructor(private host: IPanelHost) {
    super();
    this.id = 'nbbatch-jobs';
    this.addClass('nbbatch-jobs');
    this.title.caption = 'Batch jobs';
    const header = document.createElement('header');
    header.className = 'nbbatch-jobs-header';
    header.textContent = 'Batch jobs';
    this.message = document.createElement('div');
    this.message.className = 'nbbatch-jobs-message';
    this.list = document.createElement('ul');
    this.list.className = 'nbbatch-jobs-list';
    this.node.append(header, this.message, this.list);
  }

  /** Fetch the list now and schedule the next fetch. */
  async refresh(): Promise<void> {
    window.clearTimeout(this.timer);
    let delay = IDLE_MS;
    try {
      const data = await api.listJobs();
      this.jobs = data.jobs;
      this.render();
      this.setMessage(data.jobs.length ? '' : 'No batch jobs in the ledger yet.');
      delay = nextDelay(data.jobs);
      if (this.isVisible && checkDue(this.jobs, this.lastCheck, Date.now())) {
        void this.checkOpen();
      }
    } catch (error) {
      this.setMessage(`Could not list jobs: ${(error as Error).message}`, true);
    }
    if (!this.isDisposed) {
      this.timer = window.setTimeout(() => this.tick(), delay);
    }
  }

  dispose(): void {
    window.clearTimeout(this.timer);
    super.dispose();
  }

  protected onAfterShow(): void {
    this.lastCheck = null; // shown: check the running jobs at once
    void this.refresh();
  }

  /** Ask the server to check the running jobs (one at a time, poll only), then list
   * them again. One request at a time from this sidebar. */
  private async checkOpen(): Promise<void> {
    if (this.checking) {
      return;
    }
    this.checking = true;
    this.lastCheck = Date.now();
    try {
      const result = await api.checkOpen();
      if (result.checked.length || result.failed.length) {
        await this.refresh();
      }
    } catch (error) {
      this.setMessage(`Could not check the running jobs: ${(error as Error).message}`, true);
    } finally {
      this.checking = false;
    }
  }

  private tick(): void {
    // Hidden: look again later without asking the server; shown again: at once.
    if (this.isVisible) {
      void this.refresh();
    } else {
      this.timer = window.setTimeout(() => this.tick(), IDLE_MS);
    }
  }

  private setMessage(text: string, error = false): void {
    this.message.textContent = text;
    this.message.classList.toggle('nbbatch-jobs-error', error);
  }

  private render(): void {
    const items = this.jobs.map(job => this.renderJob(job));
    this.list.replaceChildren(...items);
  }

  private renderJob(job: IJob): HTMLElement {
    const li = el('li', 'nbbatch-job');
    li.dataset.jobId = job.id;
    li.dataset.status = job.status;
    if (job.stale) {
      li.dataset.stale = '1'; // its "running" is not confirmed lately: shown greyed
    }

    const head = el('div', 'nbbatch-job-head');
    head.append(
      el('span', 'nbbatch-job-id', job.id),
      el('span', `nbbatch-job-status nbbatch-status-${job.status}`, job.status)
    );
    for (const mark of marks(job)) {
      const m = el('span', `nbbatch-job-mark nbbatch-mark-${mark}`, mark);
      if (mark === 'alert') {
        m.title = job.alert ?? '';
      } else if (mark === 'stale') {
        m.textContent = staleText(job);
        m.title =
          job.check_error ??
          'Its status may be out of date: no kernel has polled it lately. ' +
            'Check now, or attach to it from a notebook.';
      } else {
        m.title = 'a batch is past the 24 h window';
      }
      head.append(m);
    }
    li.append(head);

    const meta = el('div', 'nbbatch-job-meta');
    const origin = originName(job.origin);
    if (origin) {
      const o = el('span', 'nbbatch-job-origin', origin);
      o.title = job.origin ?? '';
      meta.append(o);
    }
    meta.append(
      el('span', 'nbbatch-job-model', `${job.provider} · ${job.model}`),
      el('span', 'nbbatch-job-rows', `${count(job.rows)} rows`),
      el('span', 'nbbatch-job-age', `${age(job.age)} ago`)
    );
    const checked = checkedText(job);
    if (checked) {
      const c = el('span', 'nbbatch-job-checked', checked);
      c.title = 'When its provider last answered a poll (from a kernel, the command line or this sidebar)';
      meta.append(c);
    }
    li.append(meta);

    const bar = el('div', 'nbbatch-job-bar');
    bar.dataset.done = String(done(job));
    bar.dataset.total = String(job.rows);
    bar.title = countsText(job);
    for (const seg of segments(job)) {
      const s = el('span', `nbbatch-seg nbbatch-seg-${seg.state}`);
      s.style.width = `${seg.percent}%`;
      bar.append(s);
    }
    li.append(bar);
    li.append(
      el('div', 'nbbatch-job-counts', countsText(job)),
      el('div', 'nbbatch-job-cost', money(job.cost, job.cost_estimated, job.cost_text))
    );
    if (job.quota) {
      li.append(el('div', 'nbbatch-job-quota', job.quota));
    }
    if (job.alert) {
      li.append(el('div', 'nbbatch-job-alert', job.alert));
    }
    if (job.check_error) {
      li.append(el('div', 'nbbatch-job-check-error', `Last check failed: ${job.check_error}`));
    }

    const actions = el('div', 'nbbatch-job-actions');
    actions.append(
      button('Copy', 'nbbatch-job-copy', `Copy ${job.attach}`, () => this.copy(job)),
      button('Insert', 'nbbatch-job-insert', 'Insert nb.attach(...) into the notebook', () =>
        this.insert(job)
      ),
      button('Check now', 'nbbatch-job-check', 'Ask the provider now', () => this.check(job)),
      button('Collect', 'nbbatch-job-collect', 'Write the results as Parquet', () =>
        this.collect(job)
      ),
      button('Errors', 'nbbatch-job-errors-button', "Show the failed rows' errors", () =>
        this.toggleErrors(job)
      ),
      button('Cancel', 'nbbatch-job-cancel', 'Cancel the job at the provider', () =>
        this.cancel(job)
      )
    );
    setDisabled(actions, '.nbbatch-job-check, .nbbatch-job-cancel', !isActive(job));
    const bad = job.counts.failed + job.counts.expired + job.counts.cancelled;
    setDisabled(actions, '.nbbatch-job-errors-button', bad === 0);
    li.append(actions);

    const errors = this.errors.get(job.id);
    if (errors) {
      li.append(renderErrors(errors));
    }
    return li;
  }

  private copy(job: IJob): void {
    Clipboard.copyToSystem(job.attach);
    Notification.info(`Copied ${job.attach}`, { autoClose: 3000 });
  }

  private insert(job: IJob): void {
    if (!this.host.insertIntoNotebook(job.attach)) {
      Notification.warning('Open a notebook first: the code goes into its active cell.', {
        autoClose: 5000
      });
    }
  }

  private async check(job: IJob): Promise<void> {
    await this.action(job, 'Checking', () => api.refreshJob(job.id));
  }

  private async cancel(job: IJob): Promise<void> {
    const answer = await showDialog({
      title: 'Cancel this batch job?',
      body:
        `${job.id}: ${countsText(job)}. The provider stops the open batches; ` +
        'rows already finished keep their results.',
      buttons: [
        Dialog.cancelButton({ label: 'Keep running' }),
        Dialog.warnButton({ label: 'Cancel job' })
      ]
    });
    if (answer.button.accept) {
      await this.action(job, 'Cancelling', () => api.cancelJob(job.id));
    }
  }

  private async collect(job: IJob): Promise<void> {
    // Beside the notebook it came from when that is under the server's root.
    const origin = job.origin ?? '';
    const folder =
      origin && !origin.startsWith('/') ? origin.split('/').slice(0, -1).join('/') : '';
    const result = await this.action(job, 'Collecting', () => api.collectJob(job.id, folder));
    if (result?.path) {
      const pending = result.pending ? ` (${count(result.pending)} rows still pending)` : '';
      Notification.success(`${count(result.rows ?? 0)} rows written to ${result.path}${pending}`, {
        autoClose: 8000
      });
    }
  }

  private async toggleErrors(job: IJob): Promise<void> {
    if (this.errors.has(job.id)) {
      this.errors.delete(job.id);
      this.render();
      return;
    }
    try {
      this.errors.set(job.id, await api.failedRows(job.id));
    } catch (error) {
      Notification.error(`Could not read the failed rows: ${(error as Error).message}`);
    }
    this.render();
  }

  /** Run an action, show what it said, and list the jobs again. */
  private async action(
    job: IJob,
    doing: string,
    fn: () => Promise<api.IActionResponse>
  ): Promise<api.IActionResponse | null> {
    const item = this.list.querySelector(`[data-job-id="${CSS.escape(job.id)}"]`);
    item?.classList.add('nbbatch-job-busy');
    item?.querySelectorAll('button').forEach(b => (b.disabled = true));
    this.setMessage(`${doing} ${job.id}…`);
    try {
      const result = await fn();
      this.setMessage('');
      if (result.warning) {
        Notification.warning(result.warning, { autoClose: 8000 });
      }
      return result;
    } catch (error) {
      this.setMessage(`${doing} ${job.id} failed: ${(error as Error).message}`, true);
      return null;
    } finally {
      await this.refresh();
    }
  }

  private jobs: IJob[] = [];
  private errors = new Map<string, IFailedResponse>();
  private timer = 0;
  private checking = false;
  private lastCheck: number | null = null;
  private message: HTMLElement;
  private list: HTMLElement;
}

function renderErrors(data: IFailedResponse): HTMLElement {
  const box = el('div', 'nbbatch-job-errors');
  if (!data.rows.length) {
    box.textContent = 'No failed rows collected yet.';
    return box;
  }
  const table = el('table', 'nbbatch-job-errors-table');
  const head = el('tr');
  for (const name of ['row', 'status', 'error']) {
    head.append(el('th', '', name));
  }
  table.append(head);
  for (const row of data.rows) {
    const tr = el('tr', `nbbatch-error-${row.status}`);
    // The error text usually starts with its type already; the type alone otherwise.
    const error = row.error ?? row.error_type ?? '';
    tr.append(el('td', '', row.id), el('td', '', row.status), el('td', '', error));
    table.append(tr);
  }
  box.append(table);
  if (data.total > data.rows.length) {
    box.append(el('div', '', `… and ${count(data.total - data.rows.length)} more`));
  }
  return box;
}

function el(tag: string, className = '', text?: string): HTMLElement {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

function button(label: string, className: string, title: string, onClick: () => void) {
  const b = document.createElement('button');
  b.className = `jp-Button jp-mod-minimal nbbatch-job-action ${className}`;
  b.textContent = label;
  b.title = title;
  b.addEventListener('click', onClick);
  return b;
}

function setDisabled(root: HTMLElement, selector: string, disabled: boolean): void {
  root.querySelectorAll<HTMLButtonElement>(selector).forEach(b => (b.disabled = disabled));
}
