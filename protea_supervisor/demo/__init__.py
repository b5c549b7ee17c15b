"""Stand-in programs for the demo stack and the tests: they behave like PROTEA's, with no dependencies."""
