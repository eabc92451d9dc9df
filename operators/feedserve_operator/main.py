"""Entry point of the operator process: ``kopf run -m feedserve_operator.main --all-namespaces``
(the chart's operator Deployment runs this), or ``feedserve operator run``."""

from __future__ import annotations

import kopf

from feedserve_operator.handlers import Operator, OperatorSettings, register

register(kopf.get_default_registry(), Operator(None, OperatorSettings()))
