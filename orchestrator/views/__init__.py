"""What reads a results folder: the leaderboard, the live view, the report figures."""
