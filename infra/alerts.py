"""Notify when a nightly run fails or runs too long: a Prefect webhook notification block and two
automations on deployment ``post-training/nightly``.

    POSTTRAIN_ALERT_WEBHOOK=https://hooks.example.com/... python infra/alerts.py [--after-minutes 360]

The webhook address comes from the environment (it often carries a token) and is stored in the
block's secret field, so it does not appear in logs. ``make serve`` runs this when
``POSTTRAIN_ALERT_WEBHOOK`` is set. Re-running replaces the block and both automations.
"""

from __future__ import annotations

import argparse
import asyncio
import os

BLOCK = "posttrain-nightly-alerts"
FAILED = "posttrain: nightly run failed"
TOO_LONG = "posttrain: nightly run running too long"
END_STATES = ["prefect.flow-run.Completed", "prefect.flow-run.Failed", "prefect.flow-run.Crashed",
              "prefect.flow-run.Cancelled", "prefect.flow-run.TimedOut"]


async def install_alerts(webhook_url: str, deployment: str = "post-training/nightly", after_minutes: float = 360,
                         allow_private_urls: bool = False) -> dict:
    """Create (or replace) the notification block and the two automations; returns their ids.

    ``allow_private_urls`` lets the block post to a loopback or private address (tests, on-prem
    receivers). Raises ``prefect.exceptions.ObjectNotFound`` if ``deployment`` does not exist.
    """
    from prefect.automations import Automation, EventTrigger, Posture, SendNotification
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        dep = await client.read_deployment_by_name(deployment)
        for automation in await client.read_automations():
            if automation.name in (FAILED, TOO_LONG):
                await client.delete_automation(automation.id)
    block = CustomWebhookNotificationBlock(
        name=BLOCK, url="{{ webhook }}", secrets={"webhook": webhook_url}, allow_private_urls=allow_private_urls,
        json_data={"subject": "{{subject}}", "text": "{{body}}"})
    block_id = await block.save(BLOCK, overwrite=True)
    related = {"prefect.resource.role": "deployment", "prefect.resource.id": f"prefect.deployment.{dep.id}"}
    body = ("Flow run {{ flow_run.name }} of " + deployment + " is {{ flow_run.state.name }}.\n"
            "Flow run id: {{ flow_run.id }}\n{{ flow_run.state.message }}")
    failed = await Automation(
        name=FAILED, description=f"a run of {deployment} failed, crashed or timed out",
        trigger=EventTrigger(expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.TimedOut"},
                             match={"prefect.resource.id": "prefect.flow-run.*"}, match_related=related,
                             posture=Posture.Reactive, threshold=1, within=0),
        actions=[SendNotification(block_document_id=block_id, subject=FAILED, body=body)]).acreate()
    too_long = await Automation(
        name=TOO_LONG, description=f"a run of {deployment} still running after {after_minutes:g} minutes",
        trigger=EventTrigger(after={"prefect.flow-run.Running"}, expect=set(END_STATES),
                             match={"prefect.resource.id": "prefect.flow-run.*"}, match_related=related,
                             for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
                             within=after_minutes * 60),
        actions=[SendNotification(block_document_id=block_id, subject=TOO_LONG, body=body)]).acreate()
    return {"block": str(block_id), "failed": str(failed.id), "too_long": str(too_long.id)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deployment", default="post-training/nightly")
    parser.add_argument("--after-minutes", type=float, default=360)
    parser.add_argument("--allow-private-urls", action="store_true")
    args = parser.parse_args()
    url = os.environ.get("POSTTRAIN_ALERT_WEBHOOK")
    if not url:
        raise SystemExit("set POSTTRAIN_ALERT_WEBHOOK to the webhook address that receives the alerts")
    ids = asyncio.run(install_alerts(url, args.deployment, args.after_minutes, args.allow_private_urls))
    print(f"alerts on {args.deployment}: automations {ids['failed']} (failed) and {ids['too_long']} (too long)")


if __name__ == "__main__":
    main()
