# /metrics counts the runs not yet ended by agent and status on every scrape: this partial index
# holds only those (queued, running), so the count is an index-only scan, not a scan of every run.
# Building it reads the table once (about 0.4 s a million runs on PostgreSQL).

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('agentstream', '0005_run_notice_outbox'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='run',
            index=models.Index(
                condition=models.Q(('status__in', ('queued', 'running'))),
                fields=['agent_key', 'status', 'attempt'],
                name='as_run_active_by_agent',
            ),
        ),
    ]
