"""The appliance: composition root, config, API, client, CLI, lab."""
