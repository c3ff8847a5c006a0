// Unit tests of the sidebar's pure logic, on Node's own test runner.
import { strict as assert } from 'node:assert';
import { test } from 'node:test';

import {
  age,
  attachCode,
  CHECK_MS,
  checkDue,
  checkedText,
  count,
  countsText,
  IJob,
  marks,
  money,
  nextDelay,
  originName,
  segments,
  staleText
} from '../src/model';

function job(over: Partial<IJob> = {}): IJob {
  return {
    id: 'nbb-20260101-120000-abcdef',
    origin: '/home/me/work/reviews.ipynb',
    provider: 'openai',
    model: 'gpt-4o-mini',
    endpoint: '/v1/chat/completions',
    rows: 12,
    counts: { succeeded: 6, failed: 2, expired: 0, cancelled: 0, skipped: 0, pending: 4 },
    status: 'running',
    created: 0,
    age: 90,
    cost: 0.0012,
    cost_estimated: true,
    overdue: false,
    alert: null,
    attach: 'nb.attach("nbb-20260101-120000-abcdef")',
    checked: 1000,
    checked_age: 12,
    check_error: null,
    stale: false,
    ...over
  };
}

test('the bar has one segment per state with rows, adding up to 100%', () => {
  const parts = segments(job());
  assert.deepEqual(
    parts.map(p => p.state),
    ['succeeded', 'failed', 'pending']
  );
  const sum = parts.reduce((a, p) => a + p.percent, 0);
  assert.ok(Math.abs(sum - 100) < 1e-9);
  assert.equal(parts[0].percent, 50);
});

test('an empty job draws no segment and does not divide by zero', () => {
  const empty = job({
    rows: 0,
    counts: { succeeded: 0, failed: 0, expired: 0, cancelled: 0, skipped: 0, pending: 0 }
  });
  assert.deepEqual(segments(empty), []);
  assert.equal(countsText(empty), 'no rows');
});

test('counts and money read like the panel', () => {
  assert.equal(count(1234567), '1,234,567');
  assert.equal(countsText(job()), '6 succeeded · 2 failed · 4 pending');
  assert.equal(money(0.0012, true), '$0.0012 so far');
  assert.equal(money(12.5, false), '$12.50');
  assert.equal(money(null, false), 'unknown price');
  // Three significant digits, as nbbatch.pricing.money writes them.
  assert.equal(money(0.0133, false), '$0.0133');
  assert.equal(money(0.0096, false), '$0.0096');
  assert.equal(money(0.25, false), '$0.25');
  assert.equal(money(0.0133, true, '$0.0133'), '$0.0133 so far');
});

test('ages are short', () => {
  assert.equal(age(45), '45s');
  assert.equal(age(12 * 60 + 5), '12m');
  assert.equal(age(3 * 3600 + 5 * 60), '3h 05m');
  assert.equal(age(2 * 86400 + 4 * 3600), '2d 4h');
});

test('the list refreshes often only while a job runs', () => {
  assert.equal(nextDelay([job()]), 2000);
  assert.equal(nextDelay([job({ status: 'completed' })]), 5000);
  assert.equal(nextDelay([]), 5000);
});

test('marks, origin and the attach snippet', () => {
  assert.deepEqual(marks(job()), []);
  assert.deepEqual(marks(job({ overdue: true, alert: '3 of 9 rows failed' })), [
    'overdue',
    'alert'
  ]);
  assert.equal(originName(job().origin), 'reviews.ipynb');
  assert.equal(originName(null), '');
  assert.ok(attachCode(job()).includes('job = nb.attach("nbb-20260101-120000-abcdef")'));
});

test('a running job says when it was last checked; an ended one does not', () => {
  assert.equal(checkedText(job()), 'checked 12s ago');
  assert.equal(checkedText(job({ checked: null, checked_age: null })), 'not checked yet');
  assert.equal(checkedText(job({ status: 'completed' })), '');
});

test('a stale job is marked first, saying why', () => {
  const old = job({ stale: true, checked_age: 3 * 3600 + 5 * 60 });
  assert.deepEqual(marks(old), ['stale']);
  assert.equal(staleText(old), 'not checked for 3h 05m');
  assert.equal(staleText(job({ stale: true, checked: null, checked_age: null })), 'never checked');
  const failed = job({ stale: true, check_error: 'APIConnectionError: Connection refused' });
  assert.equal(staleText(failed), 'check failed');
  assert.deepEqual(marks(job({ stale: true, overdue: true })), ['stale', 'overdue']);
});

test('running jobs are checked when the sidebar shows, then every minute', () => {
  const t = 1_000_000;
  assert.equal(checkDue([job()], null, t), true); // just shown
  assert.equal(checkDue([job()], t, t + CHECK_MS - 1), false);
  assert.equal(checkDue([job()], t, t + CHECK_MS), true);
  assert.equal(checkDue([job({ status: 'completed' })], null, t), false); // nothing to check
  assert.equal(checkDue([], null, t), false);
  assert.equal(CHECK_MS, 60000);
});
