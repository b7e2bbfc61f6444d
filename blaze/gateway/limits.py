"""Per-key limits shared by every gateway replica through Redis.

Rates are token buckets (a Lua script: refill by elapsed time on Redis' clock, take ``cost``
tokens or say how long until there are enough), so a burst up to the bucket's size passes and
the steady rate is what the key was given. ``limits`` (the library behind slowapi) offers
fixed and sliding windows only, not buckets with a cost and a retry time in one round trip.

Open jobs: each key's unfinished job ids sit in a Redis set that ``admit`` checks and extends
atomically with the jobs' owner records; finished ids leave it when the set nears the cap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import redis

from blaze.gateway.auth import Principal, text_of
from blaze.gateway.errors import ApiError
from pipelines.settings import BlazeSettings
from pipelines.stores.status import StatusStore
from pipelines.stores.status_redis import job_key


def _script(name: str) -> str:
    return resources.files("blaze.gateway").joinpath(name).read_text()


BUCKET_LUA = _script("bucket.lua")
SUBMIT_LUA = _script("submit.lua")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Bucket:
    """One bucket's answer: allowed or not, what is left, and when to try again."""

    allowed: bool
    limit: float
    remaining: float
    retry_after_s: float
    full_in_s: float

    def headers(self, unit: str) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers for this bucket (``unit``: requests, jobs)."""
        return {
            f"x-ratelimit-limit-{unit}": str(int(self.limit)),
            f"x-ratelimit-remaining-{unit}": str(max(0, int(self.remaining))),
            f"x-ratelimit-reset-{unit}": f"{self.full_in_s:.3f}s",
        }


def too_many(bucket: Bucket, unit: str, what: str) -> ApiError:
    headers = {
        **bucket.headers(unit),
        "retry-after": str(max(1, math.ceil(bucket.retry_after_s))),
        "retry-after-ms": str(max(1, math.ceil(bucket.retry_after_s * 1000))),
    }
    return ApiError(
        429,
        f"rate limit reached: {what}; retry in {bucket.retry_after_s:.2f}s",
        code="rate_limit_exceeded",
        headers=headers,
    )


class Limits:
    """Token buckets and open-job caps of one namespace."""

    def __init__(self, settings: BlazeSettings, client: redis.Redis, status: StatusStore) -> None:
        self.client = client
        self.status = status
        self.status_apart = bool(settings.redis.status_url)
        self.ns = settings.namespace
        self.owner_ttl = settings.redis.status_ttl_s
        self._bucket = client.register_script(BUCKET_LUA)
        self._submit = client.register_script(SUBMIT_LUA)

    def _take(self, key: str, rate: float, burst: float, cost: int) -> Bucket:
        ok, tokens, wait = self._bucket(keys=[key], args=[rate, burst, cost])
        left = float(tokens)
        return Bucket(bool(ok), burst, left, float(wait), (burst - left) / rate)

    def _request_bucket(self, who: Principal) -> tuple[str, float, float]:
        rate = who.requests_per_s
        return f"{self.ns}:gw:rl:req:{who.key_id}", rate, max(1.0, rate)

    def _jobs_bucket(self, who: Principal) -> tuple[str, float, float]:
        per_min = who.jobs_per_min
        return f"{self.ns}:gw:rl:jobs:{who.key_id}", per_min / 60, float(per_min)

    def request(self, who: Principal) -> Bucket:
        """Take one request from the key's request bucket (one second's worth deep)."""
        return self._take(*self._request_bucket(who), 1)

    def _check(self, who: Principal, ids: Sequence[str], buckets: bool) -> tuple[int, str, str]:
        """Run ``submit.lua`` for ``ids``: with both buckets, or the admission alone."""
        rkey, rrate, rburst = self._request_bucket(who)
        jkey, jrate, jburst = self._jobs_bucket(who)
        keys = [
            rkey,
            jkey,
            self._open_key(who),
            *[self.owner_key(j) for j in ids],
        ]
        rates: list[str | int | float] = [rrate, rburst, jrate, jburst] if buckets else [0, 1, 0, 1]
        args = [*rates, who.max_open_jobs, self.owner_ttl, who.tenant, *ids]
        if self.status_apart:  # the script cannot see the status store: it is told instead
            states = self.status.states(ids)
            args += ["1" if states[j] is not None else "0" for j in ids]
        else:
            keys += [job_key(self.ns, j) for j in ids]
        code, first, second = self._submit(keys=keys, args=args)
        return int(code), _text(first), _text(second)

    def submit(self, who: Principal, job_ids: Sequence[str]) -> dict[str, str]:
        """A submission's checks in one round trip: one request, ``len(job_ids)`` jobs,
        the ids' owners and the open-jobs cap. Returns the rate headers; ``ApiError`` (429,
        409) if refused. Requests of over 2,000 jobs take the buckets, then admit in parts."""
        self._too_many_jobs(who, len(job_ids))
        _, rrate, rburst = self._request_bucket(who)
        _, jrate, jburst = self._jobs_bucket(who)
        if len(job_ids) > 2000:
            bucket = self.request(who)
            if not bucket.allowed:
                raise too_many(bucket, "requests", f"{who.requests_per_s:g} requests per second")
            jobs = self.jobs(who, len(job_ids))
            self.admit(who, job_ids)
            return {**bucket.headers("requests"), **jobs.headers("jobs")}
        code, first, second = self._check(who, job_ids, buckets=True)
        if code == 0:
            req_left, jobs_left = float(first), float(second)
            return {
                **Bucket(True, rburst, req_left, 0, (rburst - req_left) / rrate).headers(
                    "requests"
                ),
                **Bucket(True, jburst, jobs_left, 0, (jburst - jobs_left) / jrate).headers("jobs"),
            }
        if code == -3:
            left, wait = float(first), float(second)
            bucket = Bucket(False, rburst, left, wait, (rburst - left) / rrate)
            raise too_many(bucket, "requests", f"{who.requests_per_s:g} requests per second")
        if code == -4:
            left, wait = float(first), float(second)
            bucket = Bucket(False, jburst, left, wait, (jburst - left) / jrate)
            raise too_many(bucket, "jobs", f"{who.jobs_per_min} jobs per minute")
        if code == -2:
            raise self._taken(job_ids[int(first) - 1])
        # over the cap: the request was counted and the jobs bucket left alone; admit() drops
        # finished jobs from the open set and tries once more
        jobs_bucket = self.jobs(who, len(job_ids))
        self.admit(who, job_ids)
        return jobs_bucket.headers("jobs")

    def jobs(self, who: Principal, count: int) -> Bucket:
        """Take ``count`` jobs from the key's jobs-per-minute bucket; ``ApiError`` if refused."""
        self._too_many_jobs(who, count)
        bucket = self._take(*self._jobs_bucket(who), count)
        if not bucket.allowed:
            raise too_many(bucket, "jobs", f"{who.jobs_per_min} jobs per minute")
        return bucket

    @staticmethod
    def _taken(job_id: str) -> ApiError:
        return ApiError(409, f"job id {job_id!r} is already in use", field="job_id")

    @staticmethod
    def _too_many_jobs(who: Principal, count: int) -> None:
        per_min = who.jobs_per_min
        if count > per_min:
            raise ApiError(
                429,
                f"{count} jobs in one call exceed this key's {per_min} jobs per minute; "
                "send them in smaller calls",
                code="rate_limit_exceeded",
            )

    # -- ownership and open jobs -----------------------------------------------------------
    def _open_key(self, who: Principal) -> str:
        return f"{self.ns}:gw:open:{who.tenant}"

    def owner_key(self, job_id: str) -> str:
        return f"{self.ns}:gw:owner:{job_id}"

    def admit(self, who: Principal, job_ids: Sequence[str]) -> None:
        """Record ``who`` as the owner of new jobs, within its cap on open jobs.

        ``ApiError`` 409 if an id is taken, 429 if the jobs would pass the cap.
        """
        for start in range(0, len(job_ids), 2000):
            chunk = job_ids[start : start + 2000]
            try:
                self._admit_chunk(who, chunk)
            except ApiError:
                self.release(who, job_ids[:start])
                raise

    def _admit_chunk(self, who: Principal, ids: Sequence[str]) -> None:
        for attempt in (0, 1):
            code, value, _ = self._check(who, ids, buckets=False)
            if code == -2:
                raise self._taken(ids[int(value) - 1])
            if code == 0:
                return
            if attempt == 0 and self._prune(who):
                continue
            raise ApiError(
                429,
                f"this key has {value} unfinished jobs; {len(ids)} more would pass its cap of "
                f"{who.max_open_jobs}",
                code="too_many_open_jobs",
                headers={"retry-after": "5"},
            )

    def _prune(self, who: Principal) -> int:
        """Drop finished (or forgotten) jobs from the key's open set; returns how many."""
        key = self._open_key(who)
        dropped = 0
        for batch in self._members(key):
            states = self.status.states(batch)
            done = [j for j, st in states.items() if st is None or st.terminal]
            if done:
                dropped += int(self.client.srem(key, *done))
        return dropped

    def _members(self, key: str) -> list[list[str]]:
        out: list[list[str]] = []
        chunk: list[str] = []
        for member in self.client.sscan_iter(key, count=2000):
            chunk.append(text_of(member))
            if len(chunk) >= 2000:
                out.append(chunk)
                chunk = []
        return [*out, chunk] if chunk else out

    def release(self, who: Principal, job_ids: Sequence[str]) -> None:
        """Forget jobs that were admitted but never published."""
        if job_ids:
            pipe = self.client.pipeline(transaction=False)
            pipe.srem(self._open_key(who), *job_ids)
            pipe.delete(*[self.owner_key(j) for j in job_ids])
            pipe.execute()

    def owners(self, job_ids: Sequence[str]) -> dict[str, str | None]:
        if not job_ids:
            return {}
        raw = self.client.mget([self.owner_key(j) for j in job_ids])
        return {j: (text_of(v) if v else None) for j, v in zip(job_ids, raw, strict=True)}
