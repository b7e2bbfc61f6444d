"""Development aids: nothing on a serving path imports this package."""
