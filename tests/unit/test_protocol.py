"""The wire: every message kind decodes when right and is refused when wrong, and
doc/protocol.md lists every kind with exactly its fields."""

from __future__ import annotations

import inspect
import json
import re
import struct
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hq.errors import ProtocolError, UsageError
from hq.protocol import frames
from hq.protocol import messages as m
from hq.protocol.channel import check_hello, hello, welcome

DOC = Path(__file__).resolve().parents[2] / "doc" / "protocol.md"

SPEC = {"command": "sleep 1", "cwd": "/home/alice"}
ENDED = {"id": 7, "event": "ended", "at": 1.5, "started_at": 1.0, "pid": 42, "exit_code": 0,
         "signal": None, "cpu_time_s": 0.01, "max_rss_kb": 1024, "reason": None}

# A valid frame of every kind a peer may send (the smallest that is complete).
EXAMPLES: dict[type, dict[str, Any]] = {
    m.Ping: {"type": "ping", "rid": 1},
    m.ReserveSubmission: {"type": "reserve", "rid": 1},
    m.Submit: {"type": "submit", "rid": 1, "jobs": [SPEC], "environment": {"PATH": "/bin"},
               "umask": 18},
    m.SubmitPart: {"type": "submit_part", "rid": 1, "jobs": [SPEC],
                   "environment": {"PATH": "/bin"}, "umask": 18},
    m.Status: {"type": "status", "rid": 1},
    m.Jobs: {"type": "jobs", "rid": 1, "states": ["running", "done"], "limit": 5},
    m.Show: {"type": "show", "rid": 1, "id": 7},
    m.Cancel: {"type": "cancel", "rid": 1, "ids": [7, 8]},
    m.Hold: {"type": "hold", "rid": 1, "ids": [7]},
    m.Release: {"type": "release", "rid": 1, "ids": [7]},
    m.Wait: {"type": "wait", "rid": 1, "ids": [7], "timeout_s": 1.0},
    m.Watch: {"type": "watch", "rid": 1, "since": 41, "timeout_s": 10.0, "limit": 50},
    m.UpdateArray: {"type": "update_array", "rid": 1, "array": 7, "cap": 5},
    m.ArrayCounts: {"type": "array_counts", "rid": 1, "array": 7},
    m.ArrayElements: {"type": "array_elements", "rid": 1, "array": 7, "indexes": [1, 5]},
    m.JobSpecs: {"type": "job_specs", "rid": 1, "ids": [7, 8]},
    m.Resubmit: {"type": "resubmit", "rid": 1, "ids": [7], "hold": False},
    m.AdminInfo: {"type": "admin_info", "rid": 1},
    m.AdminStatus: {"type": "admin_status", "rid": 1},
    m.ListHosts: {"type": "lscluster", "rid": 1},
    m.ListUsers: {"type": "lsusers", "rid": 1},
    m.SetHostActive: {"type": "set_host_active", "rid": 1, "host": "node07", "active": False},
    m.SetClusterActive: {"type": "set_cluster_active", "rid": 1, "active": True},
    m.Reload: {"type": "reload", "rid": 1},
    m.Shutdown: {"type": "shutdown", "rid": 1},
    m.Run: {"type": "run", "host": {"name": "n1", "address": "10.0.0.1", "ssh_port": 22},
            "jobs": [{"id": 7, "submission_id": 3, "spec": {**SPEC, "signature": "ab"}}],
            "submissions": {"3": {"environment": {"PATH": "/bin"}, "umask": 18}}},
    m.CancelJobs: {"type": "cancel", "host": "n1", "ids": [7], "reason": "cancelled"},
    m.Withdraw: {"type": "withdraw", "host": "n1", "ids": [7], "attempts": [2]},
    m.Ack: {"type": "ack", "host": "n1", "ids": [7]},
    m.Superseded: {"type": "superseded", "by_pid": 4242},
    m.DrainHosts: {"type": "drain_hosts", "rid": 1, "hosts": ["n1"], "drain": True,
                   "reason": "fan"},
    m.HostEvents: {"type": "host_events", "rid": 1, "host": "n1", "limit": 10},
    m.ListExecServers: {"type": "execservers", "rid": 1},
    m.Accounting: {"type": "accounting", "rid": 1, "since": 0.0, "until": 1.0, "by": "day"},
    m.ExecServerReport: {"type": "exec_server", "host": "n1", "pid": 4242,
                         "state": "connection lost"},
    m.AdminCancel: {"type": "admin_cancel", "rid": 1, "ids": [7], "reason": "fills /scratch"},
    m.SubmissionEnded: {"type": "submission_ended", "submission_id": 7, "array_id": 41,
                        "counts": {"done": 2}, "notify": "true", "signature": "ab" * 32},
    m.JobEvents: {"type": "job_events", "host": "n1",
                  "events": [{"id": 7, "event": "started", "pid": 42, "at": 1.0}, ENDED]},
    m.Sync: {"type": "sync", "host": "n1", "running": [{"id": 8, "pid": 43, "started_at": 1.0}],
             "ended": [ENDED], "delivering": [9]},
    m.HostStateReport: {"type": "host_state", "host": "n1", "state": "unreachable",
                        "reason": "no route", "user_only": False},
    m.Undeliverable: {"type": "undeliverable", "host": "n1", "ids": [7], "reason": "down"},
    m.Heartbeat: {"type": "heartbeat", "host": "n1", "load1": 0.5, "free_memory_mb": 1000,
                  "running": 2},
    m.SyncRequest: {"type": "sync", "rid": 1},
    m.Lease: {"type": "lease"},
    m.Relay: {"type": "relay", "rid": 1, "request": {"type": "show", "id": 7}},
    m.HostFacts: {"type": "host_facts", "host": "n1", "cores": 4, "cpu_busy": 1.5,
                  "hq_daemons": 0.1, "load1": 1.2, "memory_mb": 8000, "free_memory_mb": 4000},
    m.HostReach: {"type": "host_reach", "host": "n1", "state": "unreachable", "reason": "x"},
    m.MonitorHosts: {"type": "monitor_hosts", "interval_s": 5.0,
                     "hosts": [{"name": "n1", "address": "10.0.0.1", "ssh_port": 22}]},
}

UNIONS = {"CLI_SENDS": m.CLI_SENDS, "ADMIN_SENDS": m.ADMIN_SENDS,
          "USERD_SENDS_SERVER": m.USERD_SENDS_SERVER, "SERVER_SENDS_USERD": m.SERVER_SENDS_USERD,
          "USERD_SENDS_EXECD": m.USERD_SENDS_EXECD, "EXECD_SENDS_USERD": m.EXECD_SENDS_USERD,
          "MONITOR_SENDS": m.MONITOR_SENDS, "SERVER_SENDS_MONITOR": m.SERVER_SENDS_MONITOR}


def members(union: Any) -> tuple[type, ...]:
    return getattr(union, "__args__", (union,))


def sent_kinds() -> list[tuple[str, type]]:
    return [(name, cls) for name, union in UNIONS.items() for cls in members(union)]


def body(data: Any) -> bytes:
    return json.dumps(data).encode()


@pytest.mark.parametrize(("union", "kind"), sent_kinds(),
                         ids=[f"{u}-{c.__name__}" for u, c in sent_kinds()])
def test_every_kind_decodes_from_its_example(union, kind):
    decoded = frames.decode_as(UNIONS[union], body(EXAMPLES[kind]))
    assert type(decoded) is kind
    # and what is decoded encodes back to the same frame (no field lost, none invented)
    again = frames.decode_as(UNIONS[union], frames.encode(decoded)[4:])
    assert again == decoded


@pytest.mark.parametrize("where", ["unknown field", "known field"])
def test_a_frame_nested_too_deep_is_a_protocol_error_not_a_crash(where):
    deep = "[" * 100_000 + "1" + "]" * 100_000
    field = "x" if where == "unknown field" else "ids"
    body = f'{{"type": "cancel", "rid": 5, "{field}": {deep}}}'.encode()
    with pytest.raises(ProtocolError):
        frames.decode_as(m.CLI_SENDS, body)
    assert frames.rid_of(body) in (None, 5)


@pytest.mark.parametrize("kind", list(EXAMPLES), ids=lambda k: k.__name__)
def test_an_unknown_field_is_a_protocol_error_that_names_it(kind):
    union = next(UNIONS[u] for u, c in sent_kinds() if c is kind)
    with pytest.raises(ProtocolError, match="unknown field `user`"):
        frames.decode_as(union, body({**EXAMPLES[kind], "user": "root"}))


@pytest.mark.parametrize("kind", list(EXAMPLES), ids=lambda k: k.__name__)
def test_each_required_field_missing_is_refused(kind):
    union = next(UNIONS[u] for u, c in sent_kinds() if c is kind)
    required = [f for f, default in zip(kind.__struct_fields__, _defaults(kind), strict=True)
                if default is msgspec.NODEFAULT]
    for name in required:
        frame = {k: v for k, v in EXAMPLES[kind].items() if k != name}
        with pytest.raises(ProtocolError, match=f"missing required field `{name}`"):
            frames.decode_as(union, body(frame))


def _defaults(kind: type) -> list[Any]:
    fields = kind.__struct_fields__
    defaults = list(kind.__struct_defaults__)
    return [msgspec.NODEFAULT] * (len(fields) - len(defaults)) + defaults


@pytest.mark.parametrize(("frame", "where"), [
    ({**EXAMPLES[m.Show], "id": "7"}, "$.id"),                       # a string for an int
    ({**EXAMPLES[m.Show], "id": True}, "$.id"),                      # a bool for an int
    ({**EXAMPLES[m.Show], "id": 0}, "$.id"),                         # ids start at 1
    ({**EXAMPLES[m.Show], "id": 10**30}, "$.id"),                    # a huge number
    ({**EXAMPLES[m.Cancel], "ids": [1, "2"]}, "$.ids[1]"),
    ({**EXAMPLES[m.Jobs], "states": ["exploded"]}, "$.states[0]"),
    ({**EXAMPLES[m.Heartbeat], "load1": "x"}, "$.load1"),            # the load a user faked
    ({**EXAMPLES[m.Heartbeat], "load1": 1e9}, "$.load1"),
    ({**EXAMPLES[m.HostStateReport], "state": "down"}, "$.state"),
    ({**EXAMPLES[m.Submit], "umask": 0o1000}, "$.umask"),
    ({**EXAMPLES[m.Submit], "environment": {"A": 1}}, "$.environment"),
    ({**EXAMPLES[m.Submit], "jobs": []}, "$.jobs"),
    ({**EXAMPLES[m.Submit], "jobs": [{**SPEC, "cores": 0}]}, "$.jobs[0].cores"),
    ({**EXAMPLES[m.JobEvents], "events": [{"id": 1, "event": "exploded"}]}, "$.events[0]"),
    ({**EXAMPLES[m.Wait], "timeout_s": -1}, "$.timeout_s"),
])
def test_ill_typed_or_out_of_range_fields_are_refused_with_their_place(frame, where):
    union = UNIONS["USERD_SENDS_SERVER"]
    if frame["type"] == "heartbeat" or frame["type"] == "host_state":
        union = m.USERD_SENDS_SERVER
    with pytest.raises(ProtocolError) as info:
        frames.decode_as(union, body(frame))
    assert f"at `{where}" in str(info.value)


def test_the_spec_checks_run_when_a_submission_is_decoded():
    frame = {**EXAMPLES[m.Submit], "jobs": [SPEC, {**SPEC, "cwd": "relative/dir"}]}
    with pytest.raises(ProtocolError, match=r"job 2 of 2: --cwd must be an absolute path"):
        frames.decode_as(m.CLI_SENDS, body(frame))
    with pytest.raises(ProtocolError, match="the command is empty"):
        frames.decode_as(m.CLI_SENDS, body({**EXAMPLES[m.Submit],
                                            "jobs": [{**SPEC, "command": "  "}]}))


def test_a_kind_that_a_peer_may_not_send_is_refused():
    # a command cannot report job ends, an admin connection cannot submit
    with pytest.raises(ProtocolError, match="Invalid value 'job_events'"):
        frames.decode_as(m.CLI_SENDS, body(EXAMPLES[m.JobEvents]))
    with pytest.raises(ProtocolError, match="Invalid value 'submit'"):
        frames.decode_as(m.ADMIN_SENDS, body(EXAMPLES[m.Submit]))


@pytest.mark.parametrize("raw", [
    b"", b"{", b"[]", b"null", b'{"rid": 1}', b'{"type": 5}',
    b'{"type": "show", "id": 7, "rid": 1}\xff',          # bytes after the object
    b'{"type": "show\xff", "id": 7}',                    # invalid UTF-8
    '{"type": "show", "id": 7}'.encode("utf-16"),        # not UTF-8 at all
    b"[" * 100_000 + b"]" * 100_000,                     # deep nesting
    b'{"type": "jobs", "name": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
])
def test_malformed_frames_are_protocol_errors(raw):
    with pytest.raises(ProtocolError):
        frames.decode_as(m.CLI_SENDS, raw)


def test_frames_over_the_cap_are_refused_before_they_are_read():
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        frames.check_frame_length(frames.MAX_FRAME + 1)
    with pytest.raises(UsageError, match="exceeds the limit"):
        frames.encode({"type": "ping", "pad": "x" * 100}, max_frame=50)


def test_a_frame_is_a_length_and_utf8_json():
    frame = frames.encode(m.Show(id=7, rid=3))
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    assert json.loads(frame[4:]) == {"type": "show", "id": 7, "rid": 3}
    # fields at their default are left out: a notification has no rid at all
    assert json.loads(frames.encode(m.Lease())[4:]) == {"type": "lease"}


def test_the_rid_of_a_refused_frame_is_found_for_the_error_answer():
    assert frames.rid_of(b'{"type": "show", "id": "x", "rid": 12}') == 12
    assert frames.rid_of(b'{"type": "show", "rid": "12"}') is None
    assert frames.rid_of(b"garbage") is None


def test_errors_carry_their_class_across_the_wire():
    from hq.errors import NotFound

    error = frames.error_message(NotFound("no such job: 7\nforged line"), rid=3)
    assert (error.code, error.rid, error.message) == ("not_found", 3,
                                                      "no such job: 7 forged line")
    again = frames.error_from(frames.decode_as(m.Error, frames.encode(error)[4:]))
    assert isinstance(again, NotFound) and str(again) == "no such job: 7 forged line"


def test_replies_decode_as_the_request_says():
    reply = frames.decode_as(m.Ping.reply_type, body(
        {"type": "reply", "rid": 1, "user": "alice", "server_version": "0.1.0"}))
    assert (reply.user, reply.unfinished) == ("alice", 0)
    header = frames.decode_as(m.ReplyHeader | m.Error, body({"type": "reply", "rid": 4,
                                                              "anything": [1, 2]}))
    assert header == m.ReplyHeader(rid=4)


def test_hello_versions_and_roles():
    assert check_hello(hello("cli", "hq-submit"), {"cli"}) == frames.PROTOCOL_VERSION
    assert check_hello(hello("cli", "old", version=1), {"cli"}) == 1   # an older daemon
    assert check_hello(hello("cli", "newer", version=99), {"cli"}) == frames.PROTOCOL_VERSION
    with pytest.raises(ProtocolError, match="not supported"):
        check_hello(hello("cli", "ancient", version=0), {"cli"})
    with pytest.raises(ProtocolError, match="role 'admin' is not served here"):
        check_hello(hello("admin", "hq-admin"), {"cli"})
    with pytest.raises(ProtocolError, match=r"at `\$\.role`"):
        frames.decode_as(m.Hello, body({"type": "hello", "version": 2, "role": ["admin"]}))
    assert welcome(1, user="alice").version == 1


# --- doc/protocol.md against the classes -------------------------------------------------

def _doc_rows() -> list[dict[str, str]]:
    rows, header = [], None
    for line in DOC.read_text().splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set(line) <= set("|- "):
            rows.append(dict(zip(header, cells, strict=True)))
    return [row for row in rows if "class" in row]


def _top_level_names(text: str) -> set[str]:
    """Backticked names outside brackets, braces and parentheses (those describe values)."""
    previous = None
    while previous != text:
        previous = text
        text = re.sub(r"\[[^\[\]]*\]|\{[^{}]*\}|\([^()]*\)", "", text)
    return set(re.findall(r"`(\w+)`", text.split(" — ")[0]))


def _message_classes() -> dict[str, type]:
    return {name: cls for name, cls in inspect.getmembers(m, inspect.isclass)
            if name == cls.__name__   # not an alias such as PROBE_SENDS = HostFacts
            and issubclass(cls, m.Message) and cls not in (m.Message, m.Request, m.Reply)
            and not issubclass(cls, m.Reply)}


def test_doc_lists_every_message_kind_with_exactly_its_fields():
    classes = _message_classes()
    documented: dict[str, set[str]] = {}
    replies: dict[str, set[str]] = {}
    for row in _doc_rows():
        name = row["class"].strip("`")
        assert name in classes, f"doc/protocol.md names {name}, which is no message class"
        cls = classes[name]
        assert row["type"] == f"`{cls.__struct_config__.tag}`", (name, row["type"])
        documented.setdefault(name, set()).update(_top_level_names(row["fields"]))
        if row.get("reply"):
            replies.setdefault(name, set()).update(_top_level_names(row["reply"]))
    assert set(classes) == set(documented), "classes missing from doc/protocol.md: " + \
        ", ".join(sorted(set(classes) - set(documented)))
    for name, cls in classes.items():
        fields = set(cls.__struct_fields__) - {"rid"}
        assert documented[name] == fields, f"{name}: doc {documented[name]} != {fields}"
        reply_type = getattr(cls, "reply_type", None)
        if reply_type is not None:
            assert replies.get(name) == set(reply_type.__struct_fields__) - {"rid"}, name


def test_every_kind_a_peer_may_send_has_an_example_here():
    assert {cls for _u, cls in sent_kinds()} == set(EXAMPLES)


def test_the_signed_text_is_spelled_as_json_dumps_spells_it():
    """Signatures cover hq.jobspec.signed_text; its fast encoder must give the very bytes of
    json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False), or signatures made
    by an earlier hq stop verifying."""
    import json

    from hq.jobspec import JobSpec, signed_text

    def reference(spec: JobSpec) -> bytes:
        from hq.jobspec import _signed_fields
        body = {enc: list(v) if isinstance(v, tuple) else v
                for name, enc, default in _signed_fields()
                if (v := getattr(spec, name)) != default}
        return json.dumps([2, "alice", "db1", 7, body, "d" * 64], sort_keys=True,
                          separators=(",", ":"), ensure_ascii=False).encode()

    every_char = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    specs = [JobSpec(command="true", cwd="/tmp"),
             JobSpec(command=every_char[:60000], cwd="/tmp/é", name=every_char[60000:60200],
                     cores=3, memory_mb=2**31 - 1, priority=-5, group="g\x00\x1f\x7f",
                     info_text='"\\\n\t\u2028\u2029', time_limit_s=3600, stdout="%j.o",
                     stderr="/dev/null", log_path="l", excluded_hosts=("a", "b"),
                     requeue=False, array_index=0),
             JobSpec(command=every_char[60000:], cwd="/")]
    for spec in specs:
        assert signed_text(spec, "alice", "d" * 64, database="db1", submission_id=7) == \
            reference(spec)
