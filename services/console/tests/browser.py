"""The console served over real HTTP (uvicorn on a free port, in this event loop) next to the
in-process services, and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from loyalty_console.__main__ import uvicorn_config
from loyalty_console.app import create_app
from loyalty_console.config import ConsoleSettings
from loyalty_shared.kafka.broker import free_port
from loyalty_shared.settings import PlatformSettings

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
    settings = ConsoleSettings()
    app = create_app(settings, transports=platform.transports())
    # Served as `python -m loyalty_console` serves it (proxy headers and all), on a free port.
    config = uvicorn_config(app, settings, PlatformSettings(host="127.0.0.1"), port=port)
    config.lifespan = "on"
    server = uvicorn.Server(config)
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
