// The migration source of the restore benchmark's migration rows, a process
// of its own as a source on another machine would be: serves the image
// memfd on fd 3 over TCP on 127.0.0.1 to every destination that connects,
// demand and prefetch requests only (no background push: the rows compare
// restoring on demand with replaying a working set, as the other modes'
// do). Prints its port as JSON, and exits when its stdin closes.
import { Memfd, MigrationSource } from '../../lib/index';

async function main(): Promise<void> {
  const image = Memfd.fromFd(3);
  const source = await MigrationSource.listen(image, { host: '127.0.0.1', port: 0, push: false });
  process.stdout.write(`${JSON.stringify({ port: source.address.port })}\n`);
  process.stdin.resume();
  process.stdin.once('end', () => {
    source.close();
    image.close();
    process.exit(0);
  });
}

main().catch((err) => {
  process.stderr.write(`restore source: ${(err as Error).stack ?? err}\n`);
  process.exit(3);
});
