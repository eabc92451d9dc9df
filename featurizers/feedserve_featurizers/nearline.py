"""Nearline workflow steps: refreshed by the featurizer pool's event consumers.

After a batch of engagement events is written to the feature store (and before it is
acknowledged), every workflow step whose mode includes ``nearline`` and whose trigger is
``engagements`` is recomputed for the members in the batch and stored (e.g. the member
embedding, when ``embed_member`` runs ``offline+nearline``). A transient failure (Triton down)
raises, so the events stay pending and are re-delivered: applying them again is a no-op (the
store is idempotent by event id) and the refresh is retried. Only engagements refresh:
impressions do not change a member's prompt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from feedserve.contracts import ENGAGEMENT_ACTIONS
from feedserve.settings import FeaturizerSettings
from feedserve.store.base import EngagementEvent, FeatureStore
from feedserve.triton_client import AsyncTritonClient, TritonUnavailable
from feedserve.workflow.ops import OpContext
from feedserve.workflow.runner import BatchReport, RemoteClients, Runner
from feedserve.workflow.spec import Workflow, load_configured
from feedserve_featurizers import hydrate
from feedserve_featurizers.client import InProcessFeaturizer

log = logging.getLogger(__name__)

TRANSIENT = (TritonUnavailable, ConnectionError, TimeoutError)


def engagement_steps(workflow: Workflow) -> list[str]:
    """The workflow's steps refreshed by engagement events, in dependency order."""
    return [
        n
        for n in workflow.order
        if workflow.step(n).mode.streaming and workflow.step(n).trigger == "engagements"
    ]


class NearlineRefresher:
    """Called by the event consumer with each applied batch (``consumer.drain_once``)."""

    def __init__(
        self,
        workflow: Workflow,
        ctx: hydrate.FeaturizerContext,
        triton_url: str,
        timeout_s: float = 10.0,
        concurrency: int = 8,
    ) -> None:
        self.workflow = workflow
        self.ctx = ctx
        self.triton_url = triton_url
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.steps = engagement_steps(workflow)
        self.reports: list[BatchReport] = []
        """The last batch's reports (one per step)."""

    @classmethod
    def create(
        cls, settings: FeaturizerSettings, store: FeatureStore | None = None
    ) -> NearlineRefresher | None:
        """The refresher for the configured workflow, or None when it has no such steps."""
        workflow = load_configured(settings.workflow)
        if not engagement_steps(workflow):
            return None
        ctx = hydrate.FeaturizerContext.load(settings, store=store)
        return cls(workflow, ctx, settings.triton_url)

    def __call__(self, events: Sequence[EngagementEvent]) -> None:
        members = sorted({e.member_id for e in events if e.action in ENGAGEMENT_ACTIONS})
        if not members or not self.steps:
            return
        self.reports = asyncio.run(self.refresh(members))

    async def refresh(self, members: Sequence[int]) -> list[BatchReport]:
        triton = AsyncTritonClient(self.triton_url, self.timeout_s)
        remote = RemoteClients(self.timeout_s)
        try:
            featurizer = InProcessFeaturizer(self.ctx, triton, embedding_log=None)
            runner = Runner(
                self.workflow, OpContext(featurizer, triton, self.ctx.store, remote=remote)
            )
            reports = []
            for step in self.steps:
                report = await runner.compute_keys(step, members, concurrency=self.concurrency)
                reports.append(report)
                if report.failed:
                    if isinstance(report.last_error, TRANSIENT):
                        raise report.last_error  # leave the events pending: retried later
                    log.error("nearline %s failed for %d member(s): %s", step, report.failed,
                              "; ".join(report.errors))  # fmt: skip
            return reports
        finally:
            await remote.close()
            await triton.close()
