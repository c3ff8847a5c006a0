/**
 * What the sidebar shows, as plain data and pure functions: the JSON schema the server
 * returns (nbbatch/labext/views.py) and how a job's numbers become text. No DOM and no
 * JupyterLab here, so the unit tests run in plain Node.
 */

/** Row states, in the order the bar and the counts show them. */
export const STATES = [
  'succeeded',
  'failed',
  'expired',
  'cancelled',
  'skipped',
  'pending'
] as const;
export type RowState = (typeof STATES)[number];

export interface IJob {
  id: string;
  origin: string | null;
  provider: string;
  model: string;
  endpoint: string;
  rows: number;
  counts: Record<RowState, number>;
  status: 'running' | 'completed' | 'cancelled' | 'failed';
  created: number;
  age: number;
  cost: number | null;
  cost_estimated: boolean;
  /** The cost as the server writes it (three significant digits), when given. */
  cost_text?: string;
  overdue: boolean;
  alert: string | null;
  /** Sent in waves under the account's batch queue limit: which wave, how full. */
  quota?: string | null;
  attach: string;
  /** When the provider last answered a poll of the job, from any process (epoch s). */
  checked: number | null;
  /** Seconds since `checked`, by the server's clock. */
  checked_age: number | null;
  /** Why the server's last check of the job failed, if it did. */
  check_error: string | null;
  /** Running, but not checked for a long while (or the last check failed). */
  stale: boolean;
}

export interface IJobsResponse {
  version: number;
  now: number;
  ledger: string;
  jobs: IJob[];
}

export interface IFailedRow {
  id: string;
  status: string;
  error_type: string | null;
  error: string | null;
}

export interface IFailedResponse {
  job_id: string;
  total: number;
  rows: IFailedRow[];
}

/** One segment of the progress bar: a state and its share of the rows, in percent. */
export interface ISegment {
  state: RowState;
  count: number;
  percent: number;
}

/** The bar's segments for every state with rows, pending last; shares add up to 100. */
export function segments(job: IJob): ISegment[] {
  const total = Math.max(job.rows, 1);
  return STATES.filter(s => job.counts[s] > 0).map(s => ({
    state: s,
    count: job.counts[s],
    percent: (100 * job.counts[s]) / total
  }));
}

/** Rows in a terminal state. */
export function done(job: IJob): number {
  return job.rows - job.counts.pending;
}

/** `1234567` -> `1,234,567`, the way the panel and the command line write counts. */
export function count(n: number): string {
  return Math.round(n)
    .toString()
    .replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

/** `"12 succeeded · 3 failed · 5 pending"`: the non-zero counts. */
export function countsText(job: IJob): string {
  const parts = STATES.filter(s => job.counts[s] > 0).map(
    s => `${count(job.counts[s])} ${s}`
  );
  return parts.length ? parts.join(' · ') : 'no rows';
}

/** A job's age in a few characters: `45s`, `12m`, `3h 05m`, `2d 4h`. */
export function age(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) {
    return `${s}s`;
  }
  if (s < 3600) {
    return `${Math.floor(s / 60)}m`;
  }
  if (s < 86400) {
    const m = Math.floor((s % 3600) / 60);
    return `${Math.floor(s / 3600)}h ${m.toString().padStart(2, '0')}m`;
  }
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

/** Dollars as the panel writes them; `unknown price` for a model with no price. The
 * server's own text (`text`, written by the function every nbbatch view uses) wins;
 * without it, three significant digits below a dollar and cents from a dollar up. */
export function money(dollars: number | null, estimated: boolean, text?: string): string {
  if (dollars === null) {
    return 'unknown price';
  }
  const shown = text ?? dollarsText(dollars);
  return estimated ? `${shown} so far` : shown;
}

function dollarsText(dollars: number): string {
  const size = Math.abs(dollars);
  const sign = dollars < 0 ? '-' : '';
  if (size === 0 || size >= 1) {
    return `${sign}$${size.toFixed(2)}`;
  }
  const rounded = Number(size.toPrecision(3));
  const decimals = 2 - Math.floor(Math.log10(rounded));
  let digits = rounded.toFixed(Math.max(2, decimals)).replace(/0+$/, '');
  const cents = digits.split('.')[1] ?? '';
  digits = cents.length < 2 ? digits + '0'.repeat(2 - cents.length) : digits;
  return `${sign}$${digits}`;
}

/** The notebook or script a job came from, short: its file name. */
export function originName(origin: string | null): string {
  if (!origin) {
    return '';
  }
  const parts = origin.split(/[\\/]/);
  return parts[parts.length - 1] || origin;
}

/** Whether a job can still change (so the list keeps refreshing). */
export function isActive(job: IJob): boolean {
  return job.status === 'running';
}

/** Milliseconds between refreshes while no job runs: a job submitted from any kernel
 * shows up within this (one small ledger read each time). */
export const IDLE_MS = 5000;

/** Milliseconds until the next refresh: soon while a job runs, rarely otherwise
 * (a new job from any kernel still shows up within `idle`). */
export function nextDelay(jobs: IJob[], busy = 2000, idle = IDLE_MS): number {
  return jobs.some(isActive) ? busy : idle;
}

/** The code that re-attaches to a job in a notebook cell. */
export function attachCode(job: IJob): string {
  return `import nbbatch as nb\n\njob = ${job.attach}\njob`;
}

/** Short marks beside the status: stale, overdue, alert. */
export function marks(job: IJob): string[] {
  const out: string[] = [];
  if (job.stale) {
    out.push('stale');
  }
  if (job.overdue) {
    out.push('overdue');
  }
  if (job.alert) {
    out.push('alert');
  }
  return out;
}

/** When a running job was last checked at its provider: `checked 12s ago`; empty for
 * a job that has ended (nothing left to check). */
export function checkedText(job: IJob): string {
  if (!isActive(job)) {
    return '';
  }
  return job.checked_age === null ? 'not checked yet' : `checked ${age(job.checked_age)} ago`;
}

/** The text of a stale job's mark: why its status may be out of date. */
export function staleText(job: IJob): string {
  if (job.check_error) {
    return 'check failed';
  }
  return job.checked_age === null ? 'never checked' : `not checked for ${age(job.checked_age)}`;
}

/** Milliseconds between two checks of the running jobs the sidebar asks the server
 * for while it is visible (the server polls each job once, one at a time, and leaves
 * alone a job some kernel checked in the last 30 s). Matches `checks.CHECK_EVERY`. */
export const CHECK_MS = 60000;

/** Whether to ask the server to check the running jobs now: some job runs, and the
 * last request (`last`, ms, null for none since the sidebar was shown) is `every` old. */
export function checkDue(jobs: IJob[], last: number | null, now: number, every = CHECK_MS): boolean {
  return jobs.some(isActive) && (last === null || now - last >= every);
}
