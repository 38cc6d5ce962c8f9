"""The building blocks of merchandising after ranking: the weighted business score (``business``), MMR diversity
(``mmr``) and slot filling with pins, reserved slots and caps (``slots``). The stages (``stages/merchandise.py``,
``stages/slots.py``) apply them to each request's candidates.
"""
