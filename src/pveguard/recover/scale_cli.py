"""`pveguard scale NAME [--memory SIZE] [--cores N] [--disk SIZE] | --revert` and `pveguard rca NAME`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from pveguard.backends import connect
from pveguard.context import AppContext
from pveguard.errors import UsageError
from pveguard.output import console, info, print_json
from pveguard.provision.runlock import apply_lock
from pveguard.recover.scale import Receipt


def _app(ctx: typer.Context) -> AppContext:
    obj = ctx.find_root().obj
    assert isinstance(obj, AppContext)
    return obj


def _size_mib(text: str, option: str) -> int:
    from pveguard.strategy.units import MIB, parse_size

    try:
        value = parse_size(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}", hint="e.g. 512M, 2G") from None
    if value < MIB:
        raise UsageError(f"{option} must be at least 1M, not {text!r}")
    return int(value // MIB)


def scale_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A container of the strategy.")],
    memory: Annotated[str | None, typer.Option("--memory", metavar="SIZE", help="New memory limit, e.g. 768M.")] = None,
    cores: Annotated[int | None, typer.Option("--cores", min=1, metavar="N", help="New number of cores.")] = None,
    disk: Annotated[str | None, typer.Option(
        "--disk", metavar="SIZE", help="Grow the root disk to this size, e.g. 12G (disks only grow).")] = None,
    revert: Annotated[bool, typer.Option(
        "--revert", help="Back to the strategy's memory and cores (a grown disk stays: disks cannot shrink).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the receipt as JSON.")] = False,
) -> None:
    """Resize NAME live where the backend can (memory, cores; disk grows only), with a receipt in the ledger."""
    app_ctx = _app(ctx)
    manual = {k: v for k, v in (("memory", memory), ("cores", cores), ("disk", disk)) if v is not None}
    if revert and manual:
        raise UsageError("--revert cannot be combined with --memory, --cores or --disk")
    if not revert and not manual:
        raise UsageError("say what to change", hint=f"pveguard scale {name} --memory 1G | --cores 2 | --disk 12G | "
                                                    "--revert")
    strategy = app_ctx.strategy
    backend = connect(strategy)
    try:
        with apply_lock(app_ctx.state_dir, "scale"):  # not while an apply converges the same containers
            receipt = _scale(app_ctx, backend, name, revert, memory, cores, disk)
    finally:
        backend.close()
    if json_out:
        print_json(receipt.as_dict())
        return
    if not receipt.changed:
        console.print(f"{escape(name)}: nothing to change (memory {receipt.before.memory} MiB, "
                      f"{receipt.before.cores} cores, disk {receipt.before.disk} GiB)")
    for r in receipt.changed:
        unit = {"memory": "MiB", "cores": "cores", "disk": "GiB"}[r]
        live = "at the next restart" if r in receipt.pending else "live"
        console.print(f"{escape(name)}: {r} {receipt.before.get(r)} -> {receipt.after.get(r)} {unit} ({live})")  # type: ignore[arg-type]
    for n in receipt.notes:
        info(f"note: {n}")


def _scale(app_ctx: AppContext, backend: Any, name: str, revert: bool, memory: str | None, cores: int | None,
           disk: str | None) -> Receipt:
    from pveguard.backends.base import Marker, read_marker
    from pveguard.provision.cli import instance_id
    from pveguard.recover import rca
    from pveguard.recover.scale import Resource, apply_size, base_size, current_size, revert_target

    strategy = app_ctx.strategy
    g = rca.find_guest(backend, strategy, name)
    cfg = backend.get_config(g)
    if read_marker(cfg.get("description")) != Marker(instance_id(app_ctx)):
        raise UsageError(f"{name} (CT {g.vmid}) is not managed by this installation",
                         hint=f"take it over first with 'pveguard adopt {g.vmid}'")
    c = next(x for x in strategy.containers if x.name == name)
    base = base_size(c)
    notes: list[str] = []
    want: dict[Resource, int]
    if revert:
        want, notes = revert_target(current_size(cfg), base)
        reason = "revert to the strategy's size"
    else:
        want = {}
        if memory is not None:
            want["memory"] = _size_mib(memory, "--memory")
        if cores is not None:
            want["cores"] = cores
        if disk is not None:
            want["disk"] = -(-_size_mib(disk, "--disk") // 1024)
        reason = "set by an admin"
    receipt = apply_size(backend, g, cfg, base, want, reason, app_ctx.record,
                         action="recover.revert" if revert else "recover.scale")
    receipt.notes += notes
    return receipt


def rca_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A container of the strategy.")],
    since: Annotated[str, typer.Option("--since", metavar="DURATION", help="How far back, e.g. 30m, 1h, 2d.")] = "1h",
    fmt: Annotated[str, typer.Option("--format", metavar="markdown|html|json", help="Report format.")] = "markdown",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")] = None,
) -> None:
    """A root-cause report: metrics, alerts, OOM and journal lines, top processes, package and config changes."""
    from pveguard.recover import rca
    from pveguard.strategy.units import parse_duration

    if fmt not in rca.FORMATS:
        raise UsageError(f"unknown format {fmt!r}", hint="use markdown, html or json")
    try:
        seconds = parse_duration(since).total_seconds()
    except ValueError as exc:
        raise UsageError(f"--since: {exc}", hint="e.g. 30m, 1h or 2d") from None
    if seconds <= 0:
        raise UsageError("--since must be longer than 0s", hint="e.g. 30m, 1h or 2d")
    app_ctx = _app(ctx)
    strategy = app_ctx.strategy
    backend = connect(strategy)
    now = time.time()
    try:
        doc: dict[str, Any] = rca.build(backend, strategy, app_ctx.store, name, now - seconds, now)
    finally:
        backend.close()
    text = rca.render(doc, fmt)
    if output is None:
        typer.echo(text, nl=not text.endswith("\n"))
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror}") from None
    info(f"wrote {output}")
