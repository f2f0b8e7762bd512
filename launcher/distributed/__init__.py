"""Everything that knows about processes, world sizes, backends and launch commands lives here."""
