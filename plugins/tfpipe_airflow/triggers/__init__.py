"""Triggers of tfpipe's deferrable operators; the triggerer imports them from this installed package."""
