// Starts kinesalite on 127.0.0.1 only (its CLI binds all interfaces).
// Usage: node bench/kinesalite-server.js PORT   (kinesalite installed under bench/.peers/)
'use strict'
const path = require('path')
const port = Number(process.argv[2])
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node kinesalite-server.js PORT')
  process.exit(2)
}
const kinesalite = require(path.join(__dirname, '.peers', 'node_modules', 'kinesalite'))
const server = kinesalite({createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0, shardLimit: 100})
server.listen(port, '127.0.0.1', (err) => {
  if (err) throw err
  console.error(`kinesalite listening on 127.0.0.1:${port}`)
})
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0))
