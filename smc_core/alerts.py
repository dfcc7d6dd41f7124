"""Alerts the monitoring raises: a row in ``alerts`` and, when ``SMC_ALERT_WEBHOOK`` is set, the
same JSON posted to it (Slack-compatible ``text`` included). A webhook that fails is logged,
never raised: an alert must not break the sensor that raises it.

Severity says what the reader must do: ``info`` a decision to read (a refused challenger),
``warning`` something the monitoring flags, ``error`` a failed run."""

from __future__ import annotations

import json
import logging
import os
import urllib.request

from psycopg.types.json import Jsonb

from smc_core.db import Database

log = logging.getLogger(__name__)
SEVERITIES = ("info", "warning", "error")


def raise_alert(db: Database, kind: str, subject: str, message: str, details: dict | None = None,
                webhook_url: str | None = None, severity: str = "warning") -> int:
    """Record an alert; returns its id."""
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    details = details or {}
    with db.connection() as connection:
        alert_id = connection.execute(
            "INSERT INTO alerts (kind, severity, subject, message, details) VALUES (%s, %s, %s, %s, %s) RETURNING id",
            (kind, severity, subject, message, Jsonb(details))).fetchone()[0]
    url = webhook_url if webhook_url is not None else os.environ.get("SMC_ALERT_WEBHOOK")
    if url:
        body = json.dumps({"text": f"[smc {kind}] {subject}: {message}", "kind": kind, "severity": severity,
                           "subject": subject,
                           "message": message, "details": details, "id": alert_id}, default=str).encode()
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                response.read()
        except OSError as error:
            log.warning("alert %s not delivered to the webhook: %s", alert_id, error)
    return int(alert_id)


def recent_alerts(db: Database, kind: str | None = None, limit: int = 20) -> list[dict]:
    with db.connection() as connection:
        rows = connection.execute(
            "SELECT id, raised_at, kind, severity, subject, message, details FROM alerts "
            "WHERE %s::text IS NULL OR kind = %s ORDER BY raised_at DESC, id DESC LIMIT %s",
            (kind, kind, limit)).fetchall()
    return [dict(zip(("id", "raised_at", "kind", "severity", "subject", "message", "details"), row)) for row in rows]
