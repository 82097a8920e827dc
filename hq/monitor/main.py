"""hq-monitor: hq-server's host monitor (started by hq-server, not by hand).

``--hub`` is the process hq-server keeps alive: it watches every host and reports to
hq-server (``hq.monitor.hub``). ``--probe`` is what the hub runs over ssh on other hosts: a
report of this host on stdout every ``--interval`` seconds until stdin closes.
"""

from __future__ import annotations

import sys

import click

from hq.program import CONTEXT_SETTINGS, run_program

PROG = "hq-monitor"


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--hub", "mode", flag_value="hub", help="Watch every host for hq-server.")
@click.option("--probe", "mode", flag_value="probe",
              help="Report this host on stdout until stdin closes (run by the hub over ssh).")
@click.option("--interval", type=click.FloatRange(min=0.05, max=3600), default=2.0,
              show_default=True, help="Seconds between two reports of --probe.")
def cli(mode: str | None, interval: float) -> int:
    """Measure hosts for hq-server, as hq-server's own account.

    \b
    Example (what hq-server runs; not for people):
      hq-monitor --hub
    """
    if mode == "probe":
        from hq.monitor.hub import probe_forever

        probe_forever(interval)
        return 0
    if mode == "hub":
        import logging

        from hq.config import Installation, load_server
        from hq.daemon import setup_logging
        from hq.monitor.hub import hub_main

        inst = Installation.locate()
        config = load_server(inst)
        setup_logging(config.log_file.with_name("hq-monitor.log"))
        logging.getLogger(__name__).info("monitor: hub of %s started", inst.root)
        hub_main(inst, config)
        return 0
    raise click.UsageError("say --hub or --probe")


def main() -> None:
    """Entry point of hq-monitor."""
    sys.exit(run_program(cli, PROG))


if __name__ == "__main__":
    main()
