"""Pure domain: models, the delivery state machine, policies, errors."""
