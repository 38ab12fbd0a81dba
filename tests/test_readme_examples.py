"""The README's API examples run as written against a live server.

Every ```sh block of the README section that holds the curl examples (and of "Workflows") runs
with `bash -e`, `$TASKHUB` replaced by the server's URL and `$TOKEN` by a
real token. curl itself exits 0 on an HTTP error, so the blocks run with
`curl` made to fail on one (and `pipefail`): an example that answers 4xx
or 5xx fails the test.
"""

from __future__ import annotations

import re
import subprocess

import pytest
from rest_framework.authtoken.models import Token

from tests.conftest import ROOT

README = ROOT / "README.md"
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)
# Run before each block: curl fails on an HTTP error, with the answer on stderr.
PRELUDE = 'set -o pipefail\ncurl() { command curl --silent --show-error --fail-with-body "$@"; }\n'


def sections(text: str) -> dict[str, str]:
    """Return the README's level-2 sections by heading."""
    parts = re.split(r"^## +(.+)$", text, flags=re.MULTILINE)
    return {heading.strip(): body for heading, body in zip(parts[1::2], parts[2::2], strict=True)}


def api_examples(text: str) -> tuple[str, list[str]]:
    """Return the heading of the section with the curl examples and its sh blocks (the "API" section if any)."""
    found = sections(text)
    heading = "API" if "API" in found else next((h for h, body in found.items() if "curl" in body), None)
    if heading is None:
        return "", []
    return heading, SH_BLOCK.findall(found[heading])


def runnable(block: str, *, url: str, token: str) -> str:
    return PRELUDE + block.replace("${TASKHUB}", url).replace("$TASKHUB", url).replace("${TOKEN}", token).replace(
        "$TOKEN", token
    )


def test_the_readme_has_curl_examples_for_the_api():
    heading, blocks = api_examples(README.read_text())
    assert blocks, "no ```sh block with curl examples in any section of the README"
    assert any("curl" in block for block in blocks), heading


def examples_to_run() -> list[str]:
    _, blocks = api_examples(README.read_text())
    # The worked example of task graphs runs too.
    blocks += SH_BLOCK.findall(sections(README.read_text()).get("Workflows", ""))
    return [block for block in blocks if "curl" in block]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("block", examples_to_run() or [""], ids=lambda block: f"line {block[:40]!r}")
def test_each_readme_api_example_runs_as_written(block, live_server, django_user_model, tmp_path):
    if "$TASKHUB" not in block and "${TASKHUB}" not in block:
        pytest.skip("the README's API examples do not name the server as $TASKHUB yet, so they cannot run here")
    admin = django_user_model.objects.create_superuser("admin", "admin@example.com", "pw-admin")
    token = Token.objects.create(user=admin).key
    script = tmp_path / "example.sh"
    script.write_text(runnable(block, url=live_server.url, token=token))

    done = subprocess.run(["bash", "-e", str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, f"{block}\n--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}"
