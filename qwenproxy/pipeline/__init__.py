"""One chat request from the door to the upstream and back: its context, in-chat commands and
sessions, routing and failover, guards, the stream relay and the ledger record it leaves."""
