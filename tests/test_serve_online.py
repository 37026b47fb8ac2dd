"""Online prediction against a real `tfrec serve`: per-user recommendations from the cached
embeddings (gRPC, REST, client, `tfrec recommend --user`) and catalogue updates."""

import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf

from tfrec.cli import main
from tfrec.exporter import load_saved_model
from tfrec.serving.client import RecommenderClient

from serving_helpers import Caller, start_server


@pytest.fixture(scope="module")
def shared(versions, tmp_path_factory):
    srv = start_server(versions, tmp_path_factory.mktemp("online"))
    yield srv
    srv.stop()


def rest(server, path, body):
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}{path}",
                                     data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_recommend_for_user_over_grpc_rest_client_and_command(shared, capsys):
    users = (shared.base / "1" / "assets.extra" / "embeddings" / "user_ids.txt"
             ).read_text().split()[:3]
    asked = users + ["no such user"]
    local = load_saved_model(shared.base / "1").signatures["recommend_for_user"](
        user_ids=tf.constant(asked), k=tf.constant(4))
    client = RecommenderClient(shared.target, "shop", timeout=30)
    try:
        served = client.recommend_for_user(asked, k=4)
        # Spaces around an id are removed, as the data's ids were when the model trained.
        [(_, known)] = client.recommend_for_user([f" {users[0]} "], k=4)
        assert known
        with pytest.raises(grpc.RpcError) as err:
            client.recommend_for_user(users, k=21)
    finally:
        client.close()
    assert err.value.details() == ("input 'k': must be between 1 and 20 (the index's max_k), "
                                   "got 21")
    assert [known for _, known in served] == [True, True, True, False]
    assert [[i for i, _ in recs] for recs, _ in served] == \
        local["item_ids"].numpy().astype(str).tolist()
    code, out = rest(shared, "/v1/models/shop:predict",
                     {"signature_name": "recommend_for_user",
                      "inputs": {"user_ids": asked, "k": 4}})
    assert code == 200 and out["outputs"]["known"] == [True, True, True, False]
    assert out["outputs"]["item_ids"] == local["item_ids"].numpy().astype(str).tolist()
    np.testing.assert_allclose(out["outputs"]["scores"], local["scores"].numpy(), rtol=1e-5,
                               atol=1e-6)
    code, out = rest(shared, "/v1/models/shop:predict",
                     {"signature_name": "recommend_for_user", "inputs": {"user_ids": [], "k": 4}})
    assert code == 400 and "input 'user_ids': the batch is empty" in out["error"]
    # The client names a call it cannot make before it asks: no user, a lone string (its
    # characters would be taken as ids), an empty list of sessions.
    client = RecommenderClient(shared.target, "shop", timeout=30)
    try:
        for call, args, message in (
                (client.recommend_for_user, ([],), "user_ids is empty"),
                (client.recommend_for_user, (users[0],), "user_ids must be a list of ids"),
                (client.recommend, ([],), "sessions must be a non-empty list of sessions"),
                (client.recommend, ("i1",), "non-empty list"),
                (client.recommend, (["i1", "i2"],), "each session must be a list of item ids"),
                (client.similar_items, ("i1",), "item_ids must be a list of ids"),
                # An id is a string as written: a nested list, None or a number is not
                # looked up under its Python text.
                (client.similar_items, ([["i1"]],), r"item_ids\[0\] must be an id string, "
                                                    "got list"),
                (client.item_texts, (["i1", None],), r"item_ids\[1\] must be an id string"),
                (client.recommend_for_user, ([17850],), r"pass '17850'"),
                (client.recommend, ([["i1", 3]],), r"sessions\[0\]\[1\] must be an id"),
                (client.embed_items, (["i1", "i2"], ["one text"]), "1 texts for 2 item_ids"),
                # k is an integer the signature's int32 holds.
                (client.recommend, ([["i1"]], 3.7), "k must be an integer, got float"),
                (client.similar_items, (["i1"], True), "k must be an integer, got bool"),
                (client.recommend_for_user, (["u"], 2**40), "k must be from 1 to"),
                (client.recommend_for_user, (["u"], 0), "k must be from 1 to")):
            with pytest.raises(ValueError, match=message):
                call(*args)
        # An empty session is a session: the popular items.
        [(recs, fallback)] = zip(*client.recommend_with_fallback([[]], k=3))
        assert fallback and len(recs) == 3
    finally:
        client.close()

    assert main(["-q", "recommend", "--server", shared.target, "--model", "shop",
                 "--user", users[0], "-k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"user: {users[0]}" and len(out) == 4
    assert out[1].split()[1] == served[0][0][0][0]
    assert main(["-q", "recommend", "--server", shared.target, "--model", "shop",
                 "--user", "no such user", "-k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "unknown user" in out[1] and "most popular items" in out[1] and len(out) == 5
    # A session with an id the model does not know: it is named, the rest recommended from.
    item = (shared.base / "1" / "assets.extra" / "embeddings" / "item_ids.txt").read_text(
        ).split()[0]
    assert main(["-q", "recommend", "--server", shared.target, "--model", "shop",
                 "--items", f"{item},nope", "-k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"session: {item}") and len(out) == 5
    assert out[1] == "  (not known to the model, left out of the session: nope)"
    # --version asks the server for that version: the served one answers, another is
    # NOT_FOUND (it was ignored: the newest answered whatever was asked).
    assert main(["-q", "recommend", "--server", shared.target, "--model", "shop",
                 "--items", item, "-k", "3", "--version", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4
    assert main(["-q", "recommend", "--server", shared.target, "--model", "shop",
                 "--items", item, "-k", "3", "--version", "9"]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err


def test_an_added_items_version_is_picked_up_with_no_failed_call(versions, tmp_path, capsys):
    from tfrec.exporter import CatalogueUpdate, update_catalogue

    srv = start_server(versions, tmp_path)
    try:
        with Caller(srv, [["i1", "i2"]]) as caller:
            items = tmp_path / "new.csv"
            items.write_text("item_id,text\nnew-lamp,a small blue lamp\n")
            added = update_catalogue(srv.base, CatalogueUpdate(add_items=items))
            srv.wait_for(2)
            caller.wait_until_served(2)
        assert caller.failures == [] and caller.served >= {1, 2}
        client = RecommenderClient(srv.target, "shop", timeout=30)
        try:
            assert client.item_texts(["new-lamp"]) == ["a small blue lamp"]
            neighbours = client.similar_items(["new-lamp"], k=3)[0]
        finally:
            client.close()
        # Alone as a session, an added item is named as one the model cannot read yet.
        capsys.readouterr()
        assert main(["-q", "recommend", "--server", srv.target, "--model", "shop",
                     "--items", "new-lamp", "-k", "3"]) == 0
        out = capsys.readouterr().out
        assert "the session's items new-lamp are in the served catalogue but not in the " \
               "model's vocabulary" in " ".join(out.split()), out
    finally:
        srv.stop()
    # The served neighbours of the new item score as its cached embedding says.
    folder = added.path / "assets.extra" / "embeddings"
    ids = (folder / "item_ids.txt").read_text().split()
    vectors = np.load(folder / "items.npy")
    lamp = vectors[ids.index("new-lamp")]
    assert len(neighbours) == 3 and "new-lamp" not in [i for i, _ in neighbours]
    np.testing.assert_allclose([score for _, score in neighbours],
                               [vectors[ids.index(i)] @ lamp for i, _ in neighbours],
                               rtol=1e-4, atol=1e-5)
    assert [s for _, s in neighbours] == sorted((s for _, s in neighbours), reverse=True)
