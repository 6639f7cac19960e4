"""The offline audit verifier: what checks a ledger export against departments and requests.

``verify.py`` checks an export (``exchange audit verify``): the log's chain, tree and
checkpoints through ``exchange.ledger``, and what only a reader of the registry and the signed
requests can check: each entry's envelope against the key history (``keyhistory.py``) and its
fields against the signed request (``binding.py``). The ledger itself knows nothing of them.
"""
