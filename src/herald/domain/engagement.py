"""Human or machine: who opened a message or clicked its link.

Mail privacy proxies fetch every image of a message when it arrives (the open pixel included),
security gateways follow every link of a message within seconds of its delivery, and bots
announce themselves in their User-Agent. Their events are recorded, but counted apart, so that
open and click rates are human rates. The rules, in order:

* a User-Agent that names a known proxy, scanner or bot (or none at all) is a machine;
* an open or a click within ``machine_seconds`` of the delivery (its report, else its send) is
  a machine: no person opens and clicks that fast, gateways and prefetchers do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Known automated fetchers, matched case-insensitively anywhere in the User-Agent.
_MACHINE_AGENTS = re.compile(
    r"googleimageproxy|ggpht\.com|yahoomailproxy|outlook-ios-image|bingpreview|"
    r"bot\b|bot/|crawler|spider|slurp|preview|facebookexternalhit|"
    r"barracuda|mimecast|proofpoint|messagelabs|symantec|forcepoint|trend ?micro|sophos|"
    r"fireeye|cisco|ironport|safelinks|microsoft office|ms-office|msoffice|"
    r"curl/|wget/|python-requests|python-urllib|python-httpx|aiohttp|go-http-client|"
    r"java/|okhttp|libwww|httpclient|scrapy|headless-scanner|urlscan|virustotal",
    re.IGNORECASE,
)
# Apple Mail Privacy Protection fetches with a bare "Mozilla/5.0".
_BARE_AGENTS = frozenset({"", "mozilla/5.0", "mozilla/4.0"})


@dataclass(frozen=True, slots=True)
class MachinePolicy:
    machine_seconds: float = 2.0


def is_machine(
    user_agent: str | None, seconds_since_delivery: float | None, policy: MachinePolicy
) -> tuple[bool, str | None]:
    """(machine, why): why is ``user_agent`` or ``too_fast``."""
    agent = (user_agent or "").strip()
    if agent.lower() in _BARE_AGENTS or _MACHINE_AGENTS.search(agent):
        return True, "user_agent"
    if seconds_since_delivery is not None and seconds_since_delivery < policy.machine_seconds:
        return True, "too_fast"
    return False, None
