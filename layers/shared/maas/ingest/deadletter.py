"""The ingest dead-letter queue: events that can never succeed, parked with their reason.

SQS's own redrive (maxReceiveCount) is for failures that may pass on a retry; it moves the
message as it is, its reason only in the logs. A permanent failure (not an S3 notification, a
key no run can come from) is sent here at once instead, the reason in message attributes and
the body kept as it was, so a redrive back to the ingest queue replays the original event.
"""

from __future__ import annotations

from typing import Any

import boto3

REASON_ATTRIBUTE = "maas-reason"
SOURCE_ATTRIBUTE = "maas-source"
KEY_ATTRIBUTE = "maas-key"
_MAX_ATTRIBUTE = 1024  # reasons and keys are short; a hostile key must not bloat the message


class DeadLetters:
    def __init__(self, queue_url: str, client: Any = None) -> None:
        self.queue_url = queue_url
        self.sqs = client or boto3.client("sqs")

    def send(
        self, body: str, reason: str, *, source: str, key: str = "", message_id: str = ""
    ) -> None:
        attributes = {
            REASON_ATTRIBUTE: reason,
            SOURCE_ATTRIBUTE: source,
            KEY_ATTRIBUTE: key,
            "maas-message-id": message_id,
        }
        self.sqs.send_message(
            QueueUrl=self.queue_url,
            MessageBody=body,
            MessageAttributes={
                name: {"DataType": "String", "StringValue": value[:_MAX_ATTRIBUTE]}
                for name, value in attributes.items()
                if value  # SQS refuses empty attribute values
            },
        )
