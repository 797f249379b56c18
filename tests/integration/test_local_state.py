"""The local stack's saved state: a round trip through the AWS APIs, and a kill mid-save.

maas_local.state copies buckets (every object version, its metadata, delete markers), the
registry table and, from a stopped stack, the queues' messages out, and back into fresh
resources; a snapshot becomes current only once it is whole on disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import boto3
import moto
import pytest
from maas_devkit.account import configure_notifications, create_resources, stack_template
from maas_devkit.events import s3_notification
from maas_devkit.repo import REGION
from maas_local.state import StateStore

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _clients() -> dict[str, Any]:
    return {s: boto3.client(s, region_name=REGION) for s in ("s3", "sqs", "dynamodb")}  # type: ignore[call-overload]


def _fill(c: dict[str, Any], res: Any) -> dict[str, Any]:
    """Two versions of a dataset (with metadata), a deleted object, a registry item, and a
    notification and a dead letter waiting on their queues."""
    data = res.names["DataBucket"]
    first = c["s3"].put_object(Bucket=data, Key="datasets/iris/iris.csv", Body=b"a,label\n1,x\n")
    second = c["s3"].put_object(
        Bucket=data,
        Key="datasets/iris/iris.csv",
        Body=b"a,label\n2,y\n",
        Metadata={"label": "label"},
        ContentType="text/csv",
    )
    c["s3"].put_object(Bucket=data, Key="datasets/gone/g.csv", Body=b"x")
    c["s3"].delete_object(Bucket=data, Key="datasets/gone/g.csv")
    c["dynamodb"].put_item(
        TableName=res.names["RegistryTable"],
        Item={"pk": {"S": "MODEL#iris"}, "sk": {"S": "META"}, "next_version": {"N": "1"}},
    )
    note = s3_notification(data, "datasets/iris/iris.csv", etag="e", version_id=second["VersionId"])
    c["sqs"].send_message(QueueUrl=res.urls["IngestQueue"], MessageBody=json.dumps(note))
    c["sqs"].send_message(
        QueueUrl=res.urls["IngestDLQ"],
        MessageBody="not an event",
        MessageAttributes={"maas-reason": {"DataType": "String", "StringValue": "not JSON"}},
    )
    return {"first": first["VersionId"], "second": second["VersionId"]}


def test_a_saved_stack_comes_back_whole_in_fresh_resources(tmp_path: Path) -> None:
    # GIVEN a stack's resources holding objects, an item and queued messages, saved as a
    # stopped stack saves them (queues included)
    store = StateStore(tmp_path / "state")
    with moto.mock_aws():
        c = _clients()
        res = create_resources(c.__getitem__, stack_template(), notifications=False)
        saved_ids = _fill(c, res)
        saved = store.save(c.__getitem__, res, queues=True)
    assert saved.queues_saved

    # WHEN a new account is built and the latest snapshot restored into it
    with moto.mock_aws():
        c = _clients()
        res = create_resources(c.__getitem__, stack_template(), notifications=False)
        snap = store.latest()
        assert snap is not None
        versions = store.restore(c.__getitem__, res, snap)
        configure_notifications(c["s3"], stack_template(), res)
        data = res.names["DataBucket"]

        # THEN every version is back in order with its metadata, the delete stays a delete,
        # the item is there, and the messages wait again, naming the restored versions
        listed = c["s3"].list_object_versions(Bucket=data, Prefix="datasets/iris/")["Versions"]
        assert len(listed) == 2
        latest = c["s3"].get_object(Bucket=data, Key="datasets/iris/iris.csv")
        assert latest["Body"].read() == b"a,label\n2,y\n"
        assert latest["Metadata"] == {"label": "label"}
        assert latest["ContentType"] == "text/csv"
        with pytest.raises(c["s3"].exceptions.NoSuchKey):
            c["s3"].get_object(Bucket=data, Key="datasets/gone/g.csv")
        item = c["dynamodb"].get_item(
            TableName=res.names["RegistryTable"],
            Key={"pk": {"S": "MODEL#iris"}, "sk": {"S": "META"}},
        )["Item"]
        assert item["next_version"] == {"N": "1"}
        (ingest,) = c["sqs"].receive_message(QueueUrl=res.urls["IngestQueue"])["Messages"]
        obj = json.loads(ingest["Body"])["Records"][0]["s3"]["object"]
        new_id = versions[(data, "datasets/iris/iris.csv", saved_ids["second"])]
        assert obj["versionId"] == new_id == latest["VersionId"]
        (dead,) = c["sqs"].receive_message(
            QueueUrl=res.urls["IngestDLQ"], MessageAttributeNames=["All"]
        )["Messages"]
        assert dead["Body"] == "not an event"
        assert dead["MessageAttributes"]["maas-reason"]["StringValue"] == "not JSON"
        # restoring wrote no upload notification of its own (configuring the notifications
        # afterwards sends S3's test event, as on AWS)
        rest = c["sqs"].receive_message(QueueUrl=res.urls["IngestQueue"], MaxNumberOfMessages=10)
        events = [json.loads(m["Body"]) for m in rest.get("Messages", [])]
        assert [e.get("Event") for e in events] == ["s3:TestEvent"]


def test_a_running_stacks_snapshot_leaves_the_queues_alone(tmp_path: Path) -> None:
    # GIVEN a message waiting on the ingest queue of a running stack
    store = StateStore(tmp_path / "state")
    with moto.mock_aws():
        c = _clients()
        res = create_resources(c.__getitem__, stack_template(), notifications=False)
        c["sqs"].send_message(QueueUrl=res.urls["IngestQueue"], MessageBody="{}")

        # WHEN it is saved while running (the pollers own the queues)
        snap = store.save(c.__getitem__, res)

        # THEN the snapshot says it holds no queue, and the message is still there to receive
        assert not snap.queues_saved and snap.queues == {}
        assert c["sqs"].receive_message(QueueUrl=res.urls["IngestQueue"])["Messages"]


def test_object_bodies_are_stored_once_whatever_the_number_of_saves(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    with moto.mock_aws():
        c = _clients()
        res = create_resources(c.__getitem__, stack_template(), notifications=False)
        for i in range(3):
            c["s3"].put_object(Bucket=res.names["ArtifactBucket"], Key=f"k{i}", Body=b"same bytes")
            store.save(c.__getitem__, res)
    blobs = [p for p in (tmp_path / "state" / "blobs").iterdir() if not p.name.startswith(".")]
    assert len(blobs) == 1
    assert len(list((tmp_path / "state" / "snapshots").glob("*.json"))) == 2  # the last two


# --- a kill in the middle of a save -----------------------------------------------------------

SAVER = textwrap.dedent(
    """
    import sys, boto3, moto
    from pathlib import Path
    from maas_devkit.account import create_resources
    from maas_devkit.cfn import load_template
    from maas_local.state import StateStore

    store = StateStore(Path(sys.argv[1]))
    with moto.mock_aws():
        c = {s: boto3.client(s, region_name="us-east-1") for s in ("s3", "sqs", "dynamodb")}
        res = create_resources(c.__getitem__, load_template(), notifications=False)
        table = res.names["RegistryTable"]
        for n in range(1, 10_000):
            # one change (an item and a 256 KiB object), then its save
            item = {"pk": {"S": "N"}, "sk": {"S": str(n)}}
            c["dynamodb"].put_item(TableName=table, Item=item)
            body = bytes([n % 251]) * 262144
            c["s3"].put_object(Bucket=res.names["DataBucket"], Key=f"o{n}", Body=body)
            store.save(c.__getitem__, res)
            print(n, flush=True)
    """
)


def test_sigkill_in_the_middle_of_a_save_loses_at_most_the_last_change(tmp_path: Path) -> None:
    # GIVEN a process that makes one change after another, saving after each
    root = tmp_path / "state"
    for attempt in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", SAVER, str(root)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t"},
        )
        assert proc.stdout is not None
        # WHEN it is killed at some point of a save (a few saves in, then a varying delay)
        for _ in range(3 + attempt):
            proc.stdout.readline()
        time.sleep(0.013 * attempt)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        confirmed = [int(n) for n in [*proc.stdout.read().split()]] or [0]

        # THEN the last complete snapshot loads, whole, with every change the process had
        # confirmed saved, and at most the one in flight beyond it
        snap = StateStore(root).latest()
        assert snap is not None
        (items,) = snap.tables.values()
        numbers = sorted(int(i["sk"]["S"]) for i in items)
        assert numbers == list(range(1, len(numbers) + 1))
        last = max(confirmed[-1], 3 + attempt)
        assert last <= len(numbers) <= last + 1, (len(numbers), last)
        objects = {e["key"] for e in snap.buckets["DataBucket"]}
        assert objects == {f"o{n}" for n in numbers}
        for entry in snap.buckets["DataBucket"]:
            assert (root / "blobs" / entry["blob"]).stat().st_size == entry["size"]
        root_tmp = [p for p in root.iterdir() if p.name.startswith(".")]
        assert all(p.is_file() for p in root_tmp)  # a torn temp file at most, never CURRENT
        # the next run starts from that snapshot, in a fresh account: clear it for the next try
        StateStore(root).reset()
