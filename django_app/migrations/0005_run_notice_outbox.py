# The run_finished outbox: what to deliver, a lease, and a delivery count (see models.RunNotice).
# Rows written before this migration keep lease_until null and are never redelivered.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('agentstream', '0004_persistence_stores'),
    ]

    operations = [
        migrations.AddField(
            model_name='runnotice',
            name='finished',
            field=models.TextField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='runnotice',
            name='lease_until',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='runnotice',
            name='deliveries',
            field=models.IntegerField(default=0),
        ),
        migrations.AddIndex(
            model_name='runnotice',
            index=models.Index(
                condition=models.Q(('notified_at__isnull', True)), fields=['lease_until'], name='as_notice_due'
            ),
        ),
    ]
