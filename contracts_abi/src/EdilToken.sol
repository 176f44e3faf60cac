// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title EDIL reward token: a plain OpenZeppelin ERC-20 whose owner mints.
/// @notice The escrow, reward and stake contracts take any ERC-20 at deployment; this one is what
///         a test network or a demo deploys when it has none.
contract EdilToken is ERC20, Ownable {
    constructor(address owner_, string memory name_, string memory symbol_) ERC20(name_, symbol_) Ownable(owner_) {}

    /// @notice Mint `amount` to `to` (owner only).
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }
}
