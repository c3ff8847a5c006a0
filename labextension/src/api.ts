/**
 * Calls to nbbatch's server extension. ServerConnection adds the server's token and
 * XSRF cookie; the server answers JSON (see nbbatch/labext/views.py).
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { IFailedResponse, IJob, IJobsResponse } from './model';

/** What an action returns: the job as it is now, and a transient problem if any. */
export interface IActionResponse {
  job: IJob | null;
  warning: string | null;
  path?: string;
  rows?: number;
  pending?: number;
}

export class ApiError extends Error {}

async function call<T>(path: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'nbbatch', 'api', path);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ApiError(`the Jupyter server did not answer: ${error}`);
  }
  let data: unknown = null;
  try {
    data = await response.json();
  } catch {
    // an HTML error page (e.g. the extension not loaded): reported below
  }
  if (!response.ok) {
    const message =
      data && typeof data === 'object' && 'error' in data
        ? String((data as { error: unknown }).error)
        : `${response.status} ${response.statusText}`;
    throw new ApiError(message);
  }
  return data as T;
}

/** Every job in the ledger (reads the ledger only). */
export function listJobs(): Promise<IJobsResponse> {
  return call<IJobsResponse>('jobs');
}

/** The rows of a job that did not succeed, with their errors. */
export function failedRows(id: string, limit = 100): Promise<IFailedResponse> {
  return call<IFailedResponse>(`jobs/${encodeURIComponent(id)}/failed?limit=${limit}`);
}

function post(id: string, action: string, body: object = {}): Promise<IActionResponse> {
  return call<IActionResponse>(`jobs/${encodeURIComponent(id)}/${action}`, {
    method: 'POST',
    body: JSON.stringify(body)
  });
}

/** Cancel at the provider (in the server process, with its keys). */
export function cancelJob(id: string): Promise<IActionResponse> {
  return post(id, 'cancel');
}

/** What a check of the running jobs did (see nbbatch/labext/checks.py). */
export interface ICheckResponse {
  checked: string[];
  failed: string[];
  busy: boolean;
}

/** Ask the server to check the running jobs nobody checked lately, one at a time
 * (it polls and collects only; it never sends rows). */
export function checkOpen(): Promise<ICheckResponse> {
  return call<ICheckResponse>('check', { method: 'POST', body: '{}' });
}

/** Poll the provider once. */
export function refreshJob(id: string): Promise<IActionResponse> {
  return post(id, 'refresh');
}

/** Write the results to `folder/<id>.parquet` under the server's root. */
export function collectJob(id: string, folder: string): Promise<IActionResponse> {
  return post(id, 'collect', { folder });
}
