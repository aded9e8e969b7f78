"""A small site that feeds amoCRM through Flask-AmoCRM (used by ``make demo``)."""
