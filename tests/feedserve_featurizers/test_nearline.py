"""Nearline workflow steps in the event consumer: run after the write, before the ack."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import pytest

from feedserve.contracts import Action
from feedserve.store.base import EngagementEvent
from feedserve.store.memory import MemoryEventLog, MemoryFeatureStore
from feedserve.workflow.spec import Mode, load_default
from feedserve_featurizers.consumer import drain_once
from feedserve_featurizers.nearline import NearlineRefresher, engagement_steps


def ev(i: int, member: int, action: Action = Action.like) -> EngagementEvent:
    return EngagementEvent(
        event_id=f"e{i}", member_id=member, post_id=100 + i, action=action, ts=1000 + i
    )


def test_a_failing_refresh_leaves_the_batch_pending_and_a_retry_applies_it_once() -> None:
    store, log = MemoryFeatureStore(), MemoryEventLog()
    log.append([ev(1, 7), ev(2, 7), ev(3, 8)])
    seen: list[list[int]] = []

    def failing(events: Sequence[EngagementEvent]) -> None:
        seen.append([e.member_id for e in events])
        raise ConnectionError("triton down")

    with pytest.raises(ConnectionError):
        drain_once(log, store, "c1", block_ms=0, after_apply=failing)
    assert seen == [[7, 7, 8]]
    assert len(store.get_history(7)) == 2  # written before the refresh ran
    assert log.pending() == 3  # not acknowledged: they will be re-delivered

    def ok(events: Sequence[EngagementEvent]) -> None:
        seen.append([e.member_id for e in events])

    assert drain_once(log, store, "c2", block_ms=0, reclaim_idle_ms=0, after_apply=ok) == 3
    assert seen[-1] == [7, 7, 8] and log.pending() == 0
    assert len(store.get_history(7)) == 2  # re-applied idempotently, not twice


def test_only_engagement_triggered_nearline_steps_refresh() -> None:
    wf = load_default()
    assert engagement_steps(wf) == []  # the default computes the member embedding online
    pre = wf.with_mode("embed_member", Mode.offline_nearline)
    assert engagement_steps(pre) == ["embed_member"]
    assert engagement_steps(wf.with_mode("embed_member", Mode.offline)) == []


def test_impressions_alone_do_not_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    pre = load_default().with_mode("embed_member", Mode.nearline)
    refresher = NearlineRefresher(pre, cast(Any, None), "127.0.0.1:1")
    calls: list[list[int]] = []

    async def fake_refresh(members: Sequence[int]) -> list[Any]:
        calls.append(list(members))
        return []

    monkeypatch.setattr(refresher, "refresh", fake_refresh)
    refresher([ev(1, 5, Action.impression), ev(2, 6, Action.impression)])
    assert calls == []
    refresher([ev(3, 6, Action.impression), ev(4, 9, Action.comment), ev(5, 4, Action.share)])
    assert calls == [[4, 9]]  # engaged members, once each
