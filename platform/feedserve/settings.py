"""Settings, one class per process, all read from ``FEEDSERVE_*`` environment variables.

``CommonSettings`` holds what every process must agree on (where Redis is, where the built
artifacts are). Each process has its own subclass; nothing else in the code base reads
``os.environ`` for configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEEDSERVE_", extra="ignore")

    redis_url: str = Field(
        default="",
        description="Redis URL for the feature store, broker and streams; empty = embedded mode",
    )
    redis_prefix: str = Field(default="fs", description="key prefix for every Redis key")
    artifacts_dir: Path = Field(
        default=Path("var/artifacts"), description="built models, index and bucket tables"
    )
    data_dir: Path = Field(default=Path("var/data"), description="demo data set directory")
    history_max_len: int = Field(default=1024, ge=1, description="events kept per member")
    otlp_endpoint: str = Field(
        default="", description="OTLP/HTTP traces endpoint; empty: no export (tracing off)"
    )
    trace_file: str = Field(default="", description="also write spans as JSON lines here")
    workflow: Path | None = Field(
        default=None,
        description="feed workflow file (YAML); default: the packaged feedserve/workflow/feed.yaml",
    )

    @property
    def embedded(self) -> bool:
        """True when no Redis is configured: in-memory store and in-process featurizer."""
        return not self.redis_url


class GatewaySettings(CommonSettings):
    host: str = "127.0.0.1"
    port: int = 8000
    triton_url: str = Field(default="127.0.0.1:8001", description="Triton HTTP host:port")
    triton_timeout_s: float = Field(default=2.0, gt=0)
    featurizer_timeout_s: float = Field(default=2.0, gt=0)
    retrieval_k: int = Field(default=200, ge=1, le=2000)
    max_per_author: int = Field(default=2, ge=1)
    api_keys: str = Field(
        default="",
        description="comma-separated API keys (from a Secret); with api_key_sha256 empty too, "
        "no key is required",
    )
    api_key_sha256: str = Field(
        default="", description="comma-separated SHA-256 hex digests of accepted API keys"
    )
    rate_limit_per_s: float = Field(
        default=0.0, ge=0, description="requests per second per API key; 0: no limit"
    )
    rate_limit_burst: float = Field(default=50.0, ge=1, description="burst size per API key")
    max_in_flight: int = Field(
        default=256, ge=1, description="requests served at once; more are shed with 429"
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="largest request body")
    triton_breaker_failures: int = Field(
        default=5, ge=1, description="consecutive Triton failures that open its circuit"
    )
    triton_breaker_cooldown_s: float = Field(
        default=5.0, gt=0, description="how long an open circuit fails fast before a trial"
    )
    inference: Literal["triton", "local"] = Field(
        default="triton",
        description="triton: the models run in Triton; local: in the gateway process "
        "(monolith mode, with the embedded store and featurizer: one process in all)",
    )
    routing_dir: str = Field(
        default="",
        description="directory of per-model version weights (the operator's routing "
        "ConfigMap; canary rollouts); empty: Triton's ready versions serve",
    )
    inference_protocol: Literal["triton", "v2"] = Field(
        default="triton",
        description="how inference = triton calls the models: triton (Triton's HTTP API with "
        "its binary-tensor extension) or v2 (the plain Open Inference Protocol, JSON tensors: "
        "any v2 server, e.g. KServe InferenceServices)",
    )
    model_urls: dict[str, str] = Field(
        default_factory=dict,
        description="JSON object, model -> its endpoint (host:port or http(s) URL), for models "
        "served apart (one KServe InferenceService each); the others are called at triton_url",
    )


class FeaturizerSettings(CommonSettings):
    triton_url: str = Field(default="127.0.0.1:8001", description="Triton HTTP host:port")
    member_prompt_tokens: int = Field(default=256, ge=16)
    post_prompt_tokens: int = Field(default=128, ge=16)
    ranker_history_len: int = Field(
        default=1024, ge=1, description="most recent ranker events sent to the ranker"
    )
    network_candidates: int = Field(default=50, ge=0)
    popular_candidates: int = Field(default=50, ge=0)
    fresh_candidates: int = Field(default=50, ge=0)
    worker_concurrency: int = Field(default=4, ge=1)
    log_each_task: bool = Field(
        default=False,
        description="log Celery's line per task received and per task done (off: at 20 feeds/s "
        "they are 80 lines a second, and rendering each result for its line costs worker CPU); "
        "failures are logged either way",
    )
    event_reclaim_idle_ms: int = Field(
        default=30_000,
        ge=100,
        description="a dead consumer's pending events are re-claimed after this idle time",
    )
    featurizer_backend: Literal["celery", "dali"] = Field(
        default="celery",
        description="tensor featurization: celery = the pure-Python functions, dali = NVIDIA "
        "DALI pipelines (extra feedserve[dali]); prompts and tokens stay on Python either way",
    )
    dali_device: Literal["auto", "cpu", "gpu"] = Field(
        default="auto",
        description="dali backend: where pipelines run (auto: a GPU if DALI sees one)",
    )
    dali_threads: int = Field(default=1, ge=1, description="dali backend: CPU threads per pipeline")
    dali_max_batch: int = Field(
        default=256, ge=1, description="dali backend: most members per pipeline run"
    )


class ModelSettings(CommonSettings):
    """Settings of the Python-backend models running inside tritonserver."""

    device: str = Field(default="cpu", description="torch device for model inference")
    nearline_poll_s: float = Field(default=0.2, gt=0, description="embedding-log tail period")
    ranker_micro_batch: int = Field(
        default=256, ge=1, description="candidate tokens per shared-prefix micro-batch"
    )


class LauncherSettings(CommonSettings):
    """Settings of ``feedserve up`` and the other CLI commands."""

    host: str = "127.0.0.1"
    gateway_port: int = 8000
    model_repo: Path = Field(
        default=Path("model_repo"), description="source model repository (configs and code)"
    )
    runtime_dir: Path = Field(
        default=Path("var/run"),
        description="logs, Triton backends and the runtime model repository (exported versions)",
    )

    @property
    def runtime_model_repo(self) -> Path:
        """What tritonserver loads: the source configs plus exported versions."""
        return Path(self.runtime_dir) / "model_repo"

    featurizer_workers: int = Field(default=1, ge=0)
    startup_timeout_s: float = Field(default=180.0, gt=0)
    monolith: bool = Field(
        default=False,
        description="one process: the gateway with the store, featurizer and models inside "
        "(no Redis, no Celery, no Triton); for comparison and single-node use",
    )
