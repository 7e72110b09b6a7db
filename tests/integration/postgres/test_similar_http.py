"""GET /tracks/{track_id}/similar through a real aiqueue-server on a private
PostgreSQL (scripts/services/postgres.sh): tracks analysed over POST
/analyze by the server's embedded worker get their embedding stored, and
the route lists the nearest others (the track itself excluded), answers 400
for a k outside 1..100, 404 for a track without an embedding, and 501 when
the result store is not PostgreSQL.

    test_similar_http.py SERVER_EXE
"""
import os
import subprocess
import sys
import tempfile
import shutil
import unittest
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
from e2e_util import Server  # noqa: E402

ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
PG_SH = os.path.join(ROOT, "scripts", "services", "postgres.sh")
SERVER_EXE = None

LYRICS = {
    "rain": "The rain keeps falling on the empty street tonight, I walk alone without you",
    "rain-again": "the RAIN keeps falling on the empty streets tonight... I walk alone, without you!",
    "dance": "Dancing in the neon light until the morning comes, the bass is in my bones",
    "barley": "Fields of golden barley swaying in the summer wind, we were young and free",
    "harbour": "Old man sitting by the harbour, counting ships that never came",
    "song/with slash": "Candle burning in the window, waiting for my soldier to come home",
}


class SimilarRoute(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.base = tempfile.mkdtemp(prefix="aiq-sim-http-")
        os.chmod(cls.base, 0o755)  # the postgres user must reach its data dir
        cls.pg = os.path.join(cls.base, "pg")
        os.mkdir(cls.pg)
        subprocess.run(["bash", PG_SH, "start", cls.pg], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(os.path.join(cls.pg, "url")) as f:
            cls.url = f.read().strip()
        cls.srv = Server(SERVER_EXE, "--broker", "memory://sim-http", "--backend", cls.url,
                         "--workers", "1", "--log-level", "warning")
        for track, text in LYRICS.items():
            st, doc = cls.srv.json("POST", "/analyze", {"track_id": track, "text": text})
            assert st == 202, (st, doc)
            st, doc = cls.srv.json("GET", "/tasks/%s?wait=20" % doc["task_id"])
            assert st == 200 and doc["state"] == "SUCCESS", (st, doc)

    @classmethod
    def tearDownClass(cls):
        try:
            rc, err = cls.srv.stop()
            assert rc == 0, "server exit %d: %s" % (rc, err[-2000:])
        finally:
            subprocess.run(["bash", PG_SH, "stop", cls.pg], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            shutil.rmtree(cls.base, ignore_errors=True)

    def similar(self, track, query=""):
        return self.srv.json("GET", "/tracks/%s/similar%s"
                             % (urllib.parse.quote(track, safe=""), query))

    def test_nearest_first_itself_excluded(self):
        st, doc = self.similar("rain", "?k=3")
        self.assertEqual(st, 200, doc)
        self.assertEqual(doc["track_id"], "rain")
        self.assertEqual(doc["k"], 3)
        self.assertEqual(doc["backend"], "real[]")
        ids = [e["track_id"] for e in doc["similar"]]
        self.assertEqual(len(ids), 3)
        self.assertEqual(ids[0], "rain-again")
        self.assertNotIn("rain", ids)
        scores = [e["score"] for e in doc["similar"]]
        self.assertEqual(scores, sorted(scores, reverse=True))
        self.assertGreater(scores[0], 0.8)
        self.assertLess(scores[1], scores[0] - 0.3)

    def test_default_k_lists_every_other_track(self):
        st, doc = self.similar("dance")
        self.assertEqual(st, 200, doc)
        self.assertEqual(doc["k"], 10)
        self.assertEqual(len(doc["similar"]), len(LYRICS) - 1)

    def test_bounds_of_k(self):
        for k in ("1", "100"):
            st, doc = self.similar("rain", "?k=" + k)
            self.assertEqual(st, 200, (k, doc))
        for k in ("0", "101", "-1", "abc", "5.5", "", "+5", "%205", "99999999999999999999"):
            with self.subTest(k=k):
                st, doc = self.similar("rain", "?k=" + k)
                self.assertEqual(st, 400, (k, doc))
                self.assertIn("k: expected an integer from 1 to 100", doc["detail"])

    def test_unknown_track(self):
        st, doc = self.similar("never-analysed", "?k=5")
        self.assertEqual(st, 404, doc)
        self.assertIn("unknown track", doc["detail"])

    def test_track_id_needing_escapes(self):
        # A slash cannot be in a path segment: such an id is not routed.
        st, _ = self.similar("song/with slash")
        self.assertEqual(st, 404)
        st, doc = self.similar("harbour", "?k=1")
        self.assertEqual(st, 200, doc)
        self.assertEqual(len(doc["similar"]), 1)

    def test_other_methods_refused(self):
        st, hdrs, _ = self.srv.request("POST", "/tracks/rain/similar", b"{}",
                                       {"Content-Type": "application/json"})
        self.assertEqual(st, 405)
        self.assertIn("GET", hdrs.get("allow", ""))


class NotPostgres(unittest.TestCase):
    def test_memory_store_answers_501(self):
        srv = Server(SERVER_EXE, "--broker", "memory://sim-501", "--backend", "memory://sim-501")
        try:
            st, doc = srv.json("GET", "/tracks/x/similar?k=3")
            self.assertEqual(st, 501, doc)
            self.assertIn("PostgreSQL", doc["detail"])
            # k is checked first, whatever the store.
            st, doc = srv.json("GET", "/tracks/x/similar?k=0")
            self.assertEqual(st, 400, doc)
        finally:
            rc, err = srv.stop()
            self.assertEqual(rc, 0, err[-2000:])


if __name__ == "__main__":
    SERVER_EXE = sys.argv.pop(1)
    unittest.main()
