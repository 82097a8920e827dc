"""hq-submit: hand one job, or a jobs file of many, to hq (through the user's hq-user-server).

Start-up matters here (a script may call hq-submit thousands of times): everything beyond
click is imported where it is needed, and nothing pulls in rich or sqlalchemy.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import click

from hq.cli.common import CONTEXT_SETTINGS, print_json, run_program, say, verbosity_options
from hq.cli.completion import host_names, job_ids
from hq.errors import UsageError
from hq.program import version_option

if TYPE_CHECKING:
    from hq.jobspec import JobSpec
    from hq.protocol import BlockingClient
    from hq.protocol.messages import Submit, SubmitReply

PROG = "hq-submit"


@click.command(context_settings=CONTEXT_SETTINGS)
@version_option
@click.argument("command", nargs=-1)
@click.option("-c", "--slots", type=int, default=1, show_default=True, metavar="N",
              help="Cores the job needs.")
@click.option("-p", "--priority", type=int, default=0, show_default=True, metavar="N",
              help="Higher runs first among your jobs.")
@click.option("-g", "--group", metavar="NAME", help="A group name to select jobs by.")
@click.option("-i", "--info-text", metavar="TEXT", help="A note shown with the job.")
@click.option("-o", "--stdout", metavar="FILE",
              help="Standard output file (default hq-%j.out in the job's directory; "
                   "%j = job id, %a = array index, %A = array id).")
@click.option("-O", "--stderr", metavar="FILE",
              help="Standard error file (default hq-%j.err; %j, %a and %A as for -o).")
@click.option("-l", "--logfile", metavar="FILE",
              help="File for hq's own notes about the job (start, end, host, usage).")
@click.option("-E", "--excludeHosts", "--exclude-hosts", "exclude_hosts", multiple=True,
              metavar="H1,H2", shell_complete=host_names,
              help="Hosts the job must not run on (comma list; repeatable).")
@click.option("-S", "--shell", metavar="PATH",
              help="Absolute path of the shell that runs COMMAND (default /bin/sh).")
@click.option("-f", "--jobsFile", "--jobs-file", "jobs_file", metavar="FILE",
              help="Submit one job per line of FILE ('-': standard input), as an array whose "
                   "indexes are the line numbers; see doc/commands.md for the format.")
@click.option("-a", "--array", metavar="SPEC",
              help="Run COMMAND once per index: 1-500, 1-500:2 (step), 1,3,7-9; %CAP at the "
                   "end runs at most CAP at once (1-500%20). The job gets HQ_ARRAY_INDEX, "
                   "HQ_ARRAY_ID (and Slurm's SLURM_ARRAY_TASK_ID, SLURM_ARRAY_JOB_ID).")
@click.option("--array-cap", type=click.IntRange(1, 1_000_000), metavar="N",
              help="At most N of the array's (or the jobs file's) jobs running at once; "
                   "'hq-client update ID --cap N' changes it later.")
@click.option("-d", "--dependency", multiple=True, metavar="LIST",
              help="Start only after other jobs ended: afterok:ID[:ID...] (succeeded), "
                   "afternotok:ID (failed or cancelled), afterany:ID (ended), aftercorr:ARRAY "
                   "(element i after element i); comma list, repeatable. An ID is a job, an "
                   "array (its id: all of it) or an element (42_7).")
@click.option("--after", multiple=True, metavar="ID", shell_complete=job_ids,
              help="Shorthand for -d afterok:ID.")
@click.option("--kill-on-invalid-dep", type=click.Choice(["yes", "no"]), default="yes",
              show_default=True,
              help="When a dependency can never be met (afterok on a job that failed): "
                   "cancel the job (yes) or keep it pending with the reason (no).")
@click.option("--retries", type=click.IntRange(0, 100), default=0, show_default=True,
              metavar="N", help="Run a job that failed (non-zero exit or a signal, not a "
                                "cancel or its time limit) again, up to N times.")
@click.option("--gpus", type=click.IntRange(0, 64), default=0, metavar="N",
              help="GPUs the job needs; it gets their ids in CUDA_VISIBLE_DEVICES and "
                   "HQ_GPUS (Slurm's --gres=gpu:N is accepted too).")
@click.option("--gres", metavar="gpu:N", help="Slurm's spelling of --gpus N.")
@click.option("-C", "--constraint", metavar="FEATURES",
              help="Only hosts with these features (etc/cluster.tab): avx512&bigmem (both), "
                   "a|b (either); & binds tighter than |.")
@click.option("--notify", metavar="CMD",
              help="When the job (or every job of the array) has ended, run CMD as you on "
                   "the head node, with HQ_ARRAY_ID, HQ_STATE, HQ_DONE, HQ_FAILED, "
                   "HQ_CANCELLED in its environment.")
@click.option("--mail-user", metavar="ADDR",
              help="Mail ADDR (through the local sendmail) when the job or array has ended.")
@click.option("--mail-type", metavar="TYPES", default="END", show_default=True,
              help="With --mail-user: END or ALL (every end), FAIL (only when not all "
                   "were done), NONE; comma list.")
@click.option("--script", "force_script", is_flag=True,
              help="COMMAND's first word is a batch script (found as a script anyway when it "
                   "holds a / or ends in .sh, starts with #! and is not on PATH).")
@click.option("-m", "--estimated-memory", metavar="SIZE",
              help="Memory the job is expected to use (e.g. 512M, 2G; a number is MiB).")
@click.option("-t", "--estimated-time", metavar="DURATION",
              help="Run time the job is expected to need (e.g. 90, 15m, 2h, 1-12:00:00).")
@click.option("--name", metavar="NAME", help="A name for the job.")
@click.option("--cwd", metavar="DIR",
              help="Directory the job runs in (default: the current directory).")
@click.option("--time-limit", metavar="DURATION",
              help="Kill the job after this long (e.g. 30m, 2h, 1-00:00:00).")
@click.option("--memory", metavar="SIZE",
              help="Memory to reserve for the job on its host (e.g. 4G).")
@click.option("--no-requeue", is_flag=True,
              help="Do not run the job again when its host is lost; mark it failed.")
@click.option("--hold", is_flag=True,
              help="Keep the job(s) out of scheduling until 'hq-client release'.")
@click.option("--wait", is_flag=True,
              help="Wait until the job(s) finished; exit with the job's exit code.")
@click.option("--parsable", is_flag=True, help="Print only the job id(s), one per line.")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"ids": [...], "submission_id": N} on stdout, for scripts.')
@verbosity_options
@click.pass_context
def cli(ctx: click.Context, command: tuple[str, ...], **options: Any) -> int:
    """Run COMMAND (one string, run by the shell) as a job on the cluster, or a batch
    script with its arguments (its #HQ and #SBATCH lines are options).

    \b
    Examples:
      hq-submit "sleep 42"
      hq-submit -c 4 --memory 8G -t 2h -o run.out "./simulate --steps 1000"
      hq-submit --wait "make test"          # exits with make's exit code
      hq-submit --array 1-500%20 'sim --case $HQ_ARRAY_INDEX'
      hq-submit --after 42 ./merge.sh       # a script, copied now; runs when 42 succeeded
      hq-submit -f jobs.txt                 # one job per line: command::...<TAB>slots::2
      id=$(hq-submit --parsable "hostname")

    Options go before a script's arguments; put -- before arguments that start with -.
    """
    from hq.cli.units import option_value, parse_duration, parse_memory
    from hq.jobspec import DEFAULT_SHELL, DEFAULT_STDERR, DEFAULT_STDOUT, JobSpec

    command_text = None
    if command:
        command_text = command_from_words(ctx, command, options)
    o = options
    if o["parsable"] and o["as_json"]:
        raise UsageError("--parsable and --json cannot be combined")

    def duration(text: str | None, option: str) -> int | None:
        return None if text is None else option_value(parse_duration, text, option)

    def size(text: str | None, option: str) -> int | None:
        return None if text is None else option_value(parse_memory, text, option)

    template = JobSpec(
        command="", cwd=job_directory(o["cwd"]), shell=o["shell"] or DEFAULT_SHELL,
        name=o["name"], cores=o["slots"], memory_mb=size(o["memory"], "--memory"),
        priority=o["priority"], group=o["group"], info_text=o["info_text"],
        time_limit_s=duration(o["time_limit"], "--time-limit"),
        estimated_time_s=duration(o["estimated_time"], "-t/--estimated-time"),
        estimated_memory_mb=size(o["estimated_memory"], "-m/--estimated-memory"),
        stdout=o["stdout"] or DEFAULT_STDOUT, stderr=o["stderr"] or DEFAULT_STDERR,
        log_path=o["logfile"], excluded_hosts=host_list(o["exclude_hosts"]),
        requeue=not o["no_requeue"], retries=o["retries"], constraint=o["constraint"],
        gpus=gpu_count(o["gpus"], o["gres"]))
    specs = build_specs(command_text, o["jobs_file"], template)
    cap = o["array_cap"]
    if o["array"] is not None:
        specs, cap = array_specs(specs, o["array"], cap, o["jobs_file"])
    elif cap is not None and len(specs) == 1 and specs[0].array_index is None:
        raise UsageError("--array-cap is for an array (--array) or a jobs file (-f)")
    request = submit_request(specs, hold=o["hold"])
    if cap is not None or o["dependency"] or o["after"] or o["kill_on_invalid_dep"] == "no" \
            or o["notify"] or o["mail_user"]:
        import msgspec

        from hq.cli.workflow_options import parse_dependency

        request = msgspec.structs.replace(
            request, array_cap=cap, dependencies=parse_dependency(o["dependency"], o["after"]),
            kill_on_invalid_dep=o["kill_on_invalid_dep"] == "yes",
            **notification(o["notify"], o["mail_user"], o["mail_type"]))
    return submit_and_report(request, wait=o["wait"], parsable=o["parsable"],
                             as_json=o["as_json"])


def gpu_count(gpus: int, gres: str | None) -> int:
    """--gpus N, or Slurm's --gres=gpu:N (gpu alone is one)."""
    if gres is None:
        return gpus
    kind, _, count = gres.strip().partition(":")
    if kind != "gpu" or (count and not count.isdigit()) or int(count or 1) > 64:
        raise UsageError(f"--gres {gres}: hq knows gpu:N (N from 1 to 64) only")
    if gpus and gpus != int(count or 1):
        raise UsageError(f"--gpus {gpus} and --gres {gres} disagree: give one")
    return int(count or 1)


def notification(notify: str | None, mail_user: str | None, mail_type: str
                 ) -> dict[str, str | None]:
    """--notify, --mail-user, --mail-type as the Submit request carries them."""
    if notify is not None and not notify.strip():
        raise UsageError("--notify: the command is empty")
    if mail_user is None:
        return {"notify": notify}
    from hq.mail import MAIL_TYPES, sendmail_path

    types = [t.strip().upper() for t in mail_type.split(",") if t.strip()]
    if not types or not set(types) <= MAIL_TYPES:
        raise UsageError(f"--mail-type {mail_type}: use END, FAIL, ALL or NONE (comma list)")
    if "@" not in mail_user or any(c.isspace() for c in mail_user):
        raise UsageError(f"--mail-user {mail_user}: not a mail address")
    if "NONE" not in types and sendmail_path() is None:
        raise UsageError("--mail-user: this host has no sendmail (looked on PATH and in "
                         "/usr/sbin, /usr/lib), so no mail could be sent: use --notify "
                         "'CMD' instead, or ask the admin for a local MTA")
    return {"notify": notify, "mail_user": mail_user, "mail_type": ",".join(types)}


def command_from_words(ctx: click.Context, words: tuple[str, ...],
                       options: dict[str, Any]) -> str:
    """The command text of COMMAND's words: a batch script's copy (its directives applied
    to ``options`` that the command line did not set), or the words themselves."""
    from hq.cli.batchscript import looks_like_script

    if not looks_like_script(words[0], forced=options["force_script"]):
        if len(words) == 1:
            return words[0]
        if any(c.isspace() for c in words[0]):
            raise UsageError(f'COMMAND is one quoted string, or a program or script with its '
                             f'arguments: got an extra argument "{words[1]}"')
        import shlex

        return shlex.join(words)   # hq-submit sleep 42: the words as a command
    from hq.cli.batchscript import MAX_SCRIPT_BYTES, read_directives, script_command, script_name

    path = words[0]
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_SCRIPT_BYTES + 1)
    except OSError as err:
        raise UsageError(f"{path}: cannot read the script: {err.strerror}") from None
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise UsageError(f"{path}: the script is not UTF-8 text") from None
    directives = read_directives(path, text)
    for warning in directives.warnings:
        say(f"{PROG}: warning: {warning}")
    apply_directives(ctx, path, directives.options, options)
    if options["name"] is None:
        options["name"] = script_name(path)
    say(f"{PROG}: {path} is copied into the job now: editing it later does not change it")
    return script_command(path, text, list(words[1:]))


def apply_directives(ctx: click.Context, path: str, directives: dict[str, str],
                     options: dict[str, Any]) -> None:
    """Set ``options`` from a script's directives, where the command line set nothing (the
    command line wins, as with sbatch)."""
    params = {p.name: p for p in ctx.command.params if isinstance(p, click.Option)}
    for name, raw in directives.items():
        param = params.get(name)
        if param is None or name in ("jobs_file", "force_script"):
            raise UsageError(f"{path}: #HQ --{name.replace('_', '-')}: no such hq-submit "
                             "option in a script")
        if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE:
            continue
        try:
            value = True if param.is_flag else param.type_cast_value(
                ctx, (raw,) if param.multiple else raw)
        except click.BadParameter as err:
            raise UsageError(f"{path}: --{name.replace('_', '-')} {raw}: "
                             f"{err.format_message()}") from None
        options[name] = value


def array_specs(specs: list[JobSpec], text: str, cap: int | None, jobs_file: str | None
                ) -> tuple[list[JobSpec], int | None]:
    """``--array``: COMMAND's spec for the whole index set, signed once (a set too long to
    sign as text: one spec per index); the cap of %CAP or --array-cap."""
    from hq.cli.workflow_options import parse_array
    from hq.jobspec import array_of

    if jobs_file is not None:
        raise UsageError("--array and -f cannot be combined: a jobs file is an array "
                         "already (its line numbers are the indexes; --array-cap limits it)")
    index_set, spec_cap = parse_array(text)
    if spec_cap is not None and cap is not None and spec_cap != cap:
        raise UsageError(f"--array {text} and --array-cap {cap} name two caps: give one")
    return array_of(specs[0], index_set), cap or spec_cap


def submit_and_report(request: Submit, *, wait: bool, parsable: bool, as_json: bool) -> int:
    """Send ``request`` to the user-server, print the ids, wait if asked."""
    from hq.cli.userd_link import connect_user_server
    from hq.config import Installation

    with connect_user_server(Installation.locate(), PROG) as client:
        reply = send_submission(client, request)
        ids = reply.ids
        if not as_json:
            click.echo("\n".join(map(str, ids)) if parsable else submitted_text(ids))
        if not wait:
            if as_json:
                print_json({"ids": ids, "submission_id": reply.submission_id})
            return 0
        sys.stdout.flush()
        from hq.cli.waiting import wait_and_report, wait_for_arrays_and_report

        if len(ids) > 1 and not as_json:   # an array: waited for by its counts
            from hq.errors import NotFound

            with contextlib.suppress(NotFound):   # not an array: job by job, below
                code = wait_for_arrays_and_report(client, [ids[0]], PROG)
                if code is not None:
                    return code
        status, results = wait_and_report(client, ids, PROG)
        if as_json:
            print_json({"ids": ids, "submission_id": reply.submission_id,
                        "jobs": results})
        return status


def job_directory(cwd: str | None) -> str:
    """The absolute directory a job runs in: ``--cwd`` (relative to here) or here.

    The current directory keeps the name the shell knows ($PWD) when that is the same
    directory, so that a path through a symlink on a shared filesystem stays valid on hosts
    where the symlink points elsewhere.
    """
    here = os.environ.get("PWD", "")
    try:
        if not (os.path.isabs(here) and os.path.samefile(here, ".")):
            here = os.getcwd()
    except FileNotFoundError:
        raise UsageError("the current directory no longer exists: cd somewhere else "
                               "or use --cwd") from None
    if cwd is None:
        return here
    path = os.path.normpath(os.path.join(here, cwd))
    if not os.path.exists(path):
        raise UsageError(f"--cwd: no such directory: {path}")
    if not os.path.isdir(path):
        raise UsageError(f"--cwd: not a directory: {path}")
    return path


def host_list(values: tuple[str, ...]) -> tuple[str, ...]:
    """``-E a,b -E c`` -> ``("a", "b", "c")`` (blanks dropped, order kept, no repeats)."""
    hosts = (h.strip() for value in values for h in value.split(","))
    return tuple(dict.fromkeys(h for h in hosts if h))


def build_specs(command: str | None, jobs_file: str | None, template: JobSpec
                ) -> list[JobSpec]:
    """The jobs to submit: COMMAND with the options in ``template``, or every line of the
    jobs file with ``template`` as its defaults. UsageError for anything wrong."""
    import msgspec

    if command is not None and jobs_file is not None:
        raise UsageError("give either COMMAND or -f FILE, not both")
    if jobs_file is not None:
        from hq.cli.jobsfile import parse_jobs_file, read_jobs_file

        # The options on their own first, so that a bad option is not blamed on line 1.
        msgspec.structs.replace(template, command=":").validate()
        return parse_jobs_file(jobs_file, read_jobs_file(jobs_file), template)
    if command is None:
        raise UsageError('nothing to submit: give a COMMAND (hq-submit "sleep 42") '
                               "or a jobs file (-f FILE)")
    spec = msgspec.structs.replace(template, command=command)
    spec.validate()
    return [spec]


def send_submission(client: BlockingClient, request: Submit) -> SubmitReply:
    """Send ``request``; a big one is streamed in parts of ``PART_JOBS`` jobs on this one
    connection, and stored by hq-server all or nothing when the last part is in."""
    import msgspec

    from hq.protocol.messages import PART_JOBS, SubmitPart

    jobs = request.jobs
    timeout = 30.0 + request.job_count() / 1000   # an array signed as a whole: all of it
    if len(jobs) <= PART_JOBS:
        return client.request(request, timeout=timeout)
    starts = range(0, len(jobs) - PART_JOBS, PART_JOBS)   # the last part closes it
    for n, start in enumerate(starts):
        first = n == 0
        client.request(SubmitPart(jobs=jobs[start:start + PART_JOBS],
                                  environment=request.environment if first else None,
                                  umask=request.umask if first else None), timeout=60.0)
    return client.request(msgspec.structs.replace(request, jobs=jobs[len(starts) * PART_JOBS:],
                                                  parts=len(starts)), timeout=timeout)


def submit_request(specs: list[JobSpec], *, hold: bool) -> Submit:
    """The ``Submit`` request: the jobs, and what they share from this process."""
    import socket

    from hq.protocol.messages import Submit

    umask = os.umask(0o077)  # reading the umask means setting it: put it back at once
    os.umask(umask)
    return Submit(jobs=specs, environment=submit_environment(os.environ), umask=umask,
                  submit_host=socket.gethostname()[:255], hold=hold)


def submit_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment the jobs get; a variable whose name or value is not UTF-8 (the shell
    holds raw bytes there) is refused by name, since it could not reach the job intact."""
    env = dict(environ)
    for name, value in env.items():
        try:
            name.encode()
            value.encode()
        except UnicodeEncodeError:
            shown = name.encode(errors="surrogateescape").decode(errors="replace")
            raise UsageError(f"environment variable {shown} holds bytes that are not UTF-8: "
                             "unset it or give it a UTF-8 value before submitting") from None
    return env


def submitted_text(ids: list[int]) -> str:
    """``Submitted job 42`` or ``Submitted 100 jobs 42-141``."""
    if len(ids) == 1:
        return f"Submitted job {ids[0]}"
    if ids == list(range(ids[0], ids[0] + len(ids))):
        return f"Submitted {len(ids)} jobs {ids[0]}-{ids[-1]} (array {ids[0]})"
    from hq.cli.jobids import format_ids

    return f"Submitted {len(ids)} jobs {format_ids(ids)}"


def main() -> None:
    """Entry point of hq-submit."""
    sys.exit(run_program(cli, PROG))


if __name__ == "__main__":
    main()
