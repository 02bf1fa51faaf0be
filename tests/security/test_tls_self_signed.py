"""`radixmesh up --ssl-self-signed`: throwaway certificates, TLS everywhere, and nothing left
behind. One null-worker mesh, stopped by the test itself to see the keys go with it."""

from __future__ import annotations

import re
import signal
import stat
from pathlib import Path

import httpx2
import openai

from radixmesh.client import Client
from radixmesh.health_cli import check_health
from radixmesh.shared.tls import ClientTLS
from tests.mesh.conftest import (  # noqa: F401 (a fixture, registered by import)
    mesh_model_path,
    spawn_mesh,
    stop_process,
    wait_mesh_up,
)

CA_LINE = re.compile(r"clients trust the CA certificate (\S+);")


def test_self_signed_mesh_serves_clients_of_its_ca_and_removes_its_keys_at_exit(
        mesh_model_path: Path):  # noqa: F811
    mesh = spawn_mesh(mesh_model_path, "--ssl-self-signed")
    try:
        wait_mesh_up(mesh)
        [ca] = [Path(match[1]) for line in mesh.output if (match := CA_LINE.search(line))]
        directory = ca.parent
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert mesh.http_url.startswith("https://")
        trust = ClientTLS((str(ca),))
        http = openai.OpenAI(base_url=f"{mesh.http_url}/v1", api_key="none", max_retries=0,
                             http_client=httpx2.Client(verify=trust.ssl_context()))
        assert [model.id for model in http.models.list().data] == [mesh_model_path.name]
        with Client(mesh.grpc_address, ssl_ca_certs=str(ca)) as grpc_client:
            assert len(grpc_client.complete(text="Hi", max_new_tokens=2).token_ids) == 2
        # Every internal service speaks mutual TLS with the generated identity.
        member = ClientTLS((str(ca),), str(directory / "client.pem"),
                           str(directory / "client.key"))
        for address in mesh.internal.values():
            assert check_health(address, tls=member).serving, address
            assert not check_health(address, timeout=2).serving, address
        mesh.process.send_signal(signal.SIGTERM)
        assert mesh.process.wait(30) == 0
        assert not directory.exists(), "the throwaway keys outlived the mesh"
    finally:
        stop_process(mesh.process)
