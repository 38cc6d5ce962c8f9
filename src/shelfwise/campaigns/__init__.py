"""Email campaigns: rails for every shopper of a list or segment, through the engine's batch path
(``campaigns.run``), resolved again when the email is opened (``campaigns.open``)."""
