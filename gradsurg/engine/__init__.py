"""The engine below the front door (:mod:`gradsurg.api`): backends behind one protocol,
the dispatcher that chooses among them, and the autograd node of one direction."""
