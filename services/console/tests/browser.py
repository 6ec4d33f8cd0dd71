"""The console served over real HTTP (uvicorn on a free port, in this event loop) next to the
in-process services, and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from loyalty_console.app import create_app
from loyalty_shared.kafka.broker import free_port

from .inprocess import InProcessPlatform

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TABLET = {"width": 1180, "height": 820}  # a 10-inch tablet in landscape, at the till


@contextlib.asynccontextmanager
async def served_console(platform: InProcessPlatform) -> AsyncIterator[str]:
    port = free_port()
    app = create_app(transports=platform.transports())
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on"
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    platform.pump_in_background()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await platform.stop_background()
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()
